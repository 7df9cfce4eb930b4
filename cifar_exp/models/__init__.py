"""The networks: one functional builder per `model=` option (builders.py), weight initializers and
L2 (initializers.py), and the airbench net with the parts only it uses (airbench.py).
"""
