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

/**
 * A new browser context on baseUrl, joined to room as user, connected. Page errors and console
 * errors go to errors.
 */
export async function joinAs(browser, baseUrl, user, room, errors, timeoutMs = 10_000) {
  const page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(timeoutMs);
  page.on('pageerror', (e) => errors.push(`${user}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') {
      errors.push(`${user} console: ${m.text()}`);
    }
  });
  await page.goto(`${baseUrl}/`);
  await page.getByTestId('name-input').fill(user);
  await page.getByTestId('room-input').fill(room);
  await page.getByTestId('join-button').click();
  try {
    await page.locator('[data-testid="connection-state"][data-state="connected"]').waitFor();
  } catch (e) {
    const shown = await page.getByTestId('error').textContent().catch(() => '?');
    throw new Error(`${user} did not get connected; the page shows: ${JSON.stringify(shown)}\n${e.message}`);
  }
  return page;
}

/** Types a question and presses Ask. */
export async function askAssistant(page, prompt) {
  await page.getByTestId('message-input').fill(prompt);
  await page.getByTestId('ask-button').click();
}

/** The assistant's line for the answer with this state (streaming, done, cancelled...). */
export const answer = (page, state) => page.locator(`[data-testid="message"].assistant[data-state="${state}"]`);
