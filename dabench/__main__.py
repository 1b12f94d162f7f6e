"""python -m dabench"""
from dabench.cli import main

main()
