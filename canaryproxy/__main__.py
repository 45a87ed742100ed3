from canaryproxy.cli import main

main()
