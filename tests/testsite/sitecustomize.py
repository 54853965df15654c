"""Test-only: lets torchvision's CIFAR-10 checksums match a generated fixture.

Python imports this at start-up only when tests/testsite is on PYTHONPATH, which only the
real-size tests set for their child processes. It acts only when PEFTS_TEST_CIFAR10_MD5
names a JSON of {file name: md5} written by the fixture builder: torchvision then checks
the fixture's files against their own checksums, so a corrupt fixture still fails, and
real data read by any other process is checked against the published checksums as always.
"""

import json
import os

_MD5 = os.environ.get("PEFTS_TEST_CIFAR10_MD5")
if _MD5:
    from tests.realsize import use_fixture_checksums

    use_fixture_checksums(json.loads(open(_MD5).read()))
