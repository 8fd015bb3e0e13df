from cryptomarket.cli import main

main()
