from weightcli.cli import main

main()
