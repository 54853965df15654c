from pefts.cli import main

main()
