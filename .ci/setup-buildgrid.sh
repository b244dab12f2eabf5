#!/usr/bin/env bash
# Tier-2 REAPI tests (tests/test_remote_suite.py, case buildgrid): BuildGrid 0.4.4 in its own virtualenv,
# so its dependencies never meet runner's, and PostgreSQL from Debian. Idempotent: does
# nothing when both are there. The venv is $RUNNER_BUILDGRID_VENV (default
# /opt/runner-buildgrid; the tests read the same variable).
set -euo pipefail

VENV=${RUNNER_BUILDGRID_VENV:-/opt/runner-buildgrid}
PYTHON=${PYTHON:-python3}
BUILDGRID=0.4.4

if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql
fi

if "$VENV/bin/python" -c "
import sys, psycopg2
from buildgrid.server.version import __version__
sys.exit(__version__ != '$BUILDGRID')" 2>/dev/null; then
    exit 0
fi

# BuildGrid needs Python >= 3.11.
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "setup-buildgrid: $PYTHON is older than 3.11" >&2; exit 1; }
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# Everything BuildGrid pulls in, pinned (as resolved for buildgrid 0.4.4 on Python 3.11).
cat >"$constraints" <<'PINS'
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
alembic==1.20.1
annotated-types==0.8.0
async-lru==2.4.0
attrs==26.1.0
boto3==1.44.5
botocore==1.44.5
buildgrid-metering-client==0.0.4
cachetools==8.0.1
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
click==8.5.1
cryptography==50.0.2
dnspython==2.9.2
frozenlist==1.8.0
grpcio==1.85.1
grpcio-health-checking==1.85.1
grpcio-reflection==1.85.1
idna==3.20
janus==2.0.0
Jinja2==3.1.6
jmespath==1.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
lark-parser==0.12.0
Mako==1.4.3
MarkupSafe==3.0.4
mmh3==5.3.1
multidict==7.2.1
propcache==0.5.4
protobuf==7.36.2
psycopg==3.3.9
psycopg2-binary==2.9.13
pycparser==3.12
pycurl==7.49.0
pydantic==2.14.3
pydantic_core==2.50.4
PyJWT==2.15.1
python-dateutil==2.9.0.post0
PyYAML==6.0.3
referencing==0.37.0
requests==2.34.2
rpds-py==2026.9.1
s3transfer==0.19.3
sentry-sdk==2.75.0
six==1.17.0
SQLAlchemy==2.1.9
tenacity==9.2.1
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
yarl==1.25.1
PINS
"$VENV/bin/pip" install -q --disable-pip-version-check -c "$constraints" \
    "buildgrid[database]==$BUILDGRID"
"$VENV/bin/bgd" --help >/dev/null
echo "setup-buildgrid: BuildGrid $BUILDGRID in $VENV"
