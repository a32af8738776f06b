from otto_farm.cli.main import main

main()
