from noduleclip.cli import run

run()
