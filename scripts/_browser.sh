# Sourced by scripts/test: the dashboard tests (tests/web) drive Debian's Chromium with
# Playwright (pip's playwright ships the driver, not a browser, and `playwright install`
# needs the internet). Installs it when it is missing and we are root; else says how.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium (for the dashboard tests)"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "the dashboard tests need Chromium at /usr/bin/chromium:" >&2
    echo "  sudo apt-get install chromium" >&2
    exit 1
  fi
fi
