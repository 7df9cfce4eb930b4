"""The networks: each `model=` option's spec, builder and checks (registry.py), one functional builder
per option (builders.py), weight initializers and L2 (initializers.py), and the airbench net with the
parts only it uses (airbench.py), which reach training through its spec's hooks.
"""
