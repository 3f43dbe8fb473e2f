// Debian's headless Chromium (/usr/bin/chromium, or RINGCAST_CHROMIUM)
// through playwright-core; no browser is ever downloaded.
import { chromium } from 'playwright-core';

/** Launches headless Chromium with the flags this host needs. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.RINGCAST_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}
