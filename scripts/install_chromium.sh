#!/usr/bin/env bash
# Install Debian's chromium for the tests that open the auditor's report in a real headless
# browser (tests/integration/test_report_browser.py, driven by Playwright's Python package).
# Playwright's own browser download is never used. Does nothing when /usr/bin/chromium is
# there already.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_chromium: /usr/bin/chromium is missing; run as root, or: sudo apt-get install -y chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
