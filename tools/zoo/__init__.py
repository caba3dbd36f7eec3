"""The bundle as the MONAI model zoo packages, publishes and downloads it (``package``, ``fetch``).

``BUNDLE_NAME`` is the zoo's name for this bundle: the folder a zoo user gets from
``python -m monai.bundle download --name sd_fsmis_fewshot ...``, the top folder of the published
``sd_fsmis_fewshot_v<version>.zip`` and the name ``monai.bundle.load`` looks for. (metadata.json's
``name`` is the human title; the zoo names bundles by folder.)
"""

BUNDLE_NAME = "sd_fsmis_fewshot"
