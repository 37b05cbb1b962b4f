from tlcli.cli import main

main()
