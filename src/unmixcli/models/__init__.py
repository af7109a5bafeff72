"""Separation networks: pure `nn.Module` architectures, one file per family, no I/O.

Import the submodules directly (`unmixcli.models.htdemucs`, ...); nothing heavy
is imported here so that `import unmixcli.models` stays cheap.
"""
