from pefts.cli import run

run()
