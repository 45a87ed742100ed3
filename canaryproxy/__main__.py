from canaryproxy.cli import main

main(prog_name="canaryproxy")
