// What both browser tests share: Debian's Chromium as playwright-core launches it, the web demo
// folder, and the page actions and locators of the web demo.
import { fileURLToPath } from 'node:url';

export const WEB_ROOT = fileURLToPath(new URL('../../web-demo/', import.meta.url));
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const LAUNCH = {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
};

/** The message from sender with exactly this text, on page. */
export const message = (page, sender, text) => page.getByTestId('message')
  .filter({ has: page.getByTestId('message-sender').getByText(sender, { exact: true }) })
  .filter({ has: page.getByTestId('message-text').getByText(text, { exact: true }) });

export async function send(page, text) {
  await page.getByTestId('message-input').fill(text);
  await page.getByTestId('send-button').click();
}
