from gradcheck_cli.cli.app import main

main()
