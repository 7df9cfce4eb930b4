from cifar_exp.main import cli

cli()
