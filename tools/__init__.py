"""Research tooling around the bundle, kept out of the bundle the model zoo ships.

``runner`` runs the protocol's accuracy tables and writes the results pages, ``zoo`` packages the
bundle as the zoo publishes it and fetches it back with every check, ``docs`` draws the bundle's
pictures. They import the bundle's ``scripts`` package; run them from the repository root
(``python -m tools.runner ...``) once ``make setup`` has installed the repository (pyproject.toml).
"""
