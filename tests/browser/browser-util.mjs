// What both browser tests share: Debian's Chromium as playwright-core launches it, the web demo
// folder, and the page actions and locators of the web demo.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
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

/** Where the browser tests save their screenshots (listed in the README). */
export const SHOTS = process.env.CHAT_SCREENSHOT_DIR || fileURLToPath(new URL('../artifacts/screenshots/', import.meta.url));

export async function screenshot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

/**
 * True when page scrolls sideways (something is wider than the viewport), or when a message's
 * text or the room's title is wider than its own box (cut off inside a box that hides it).
 */
export const widerThanViewport = (page) => page.evaluate(() =>
  document.documentElement.scrollWidth > window.innerWidth || document.body.scrollWidth > window.innerWidth ||
  [...document.querySelectorAll('[data-testid="message-text"], #room-title')].some((el) => el.scrollWidth > el.clientWidth + 1));

/**
 * Every visible text on page whose contrast with its background is below WCAG AA (4.5:1, 3:1 for
 * large text), as "TAG.class "text": ratio". The background is the nearest opaque one behind
 * the text's element.
 */
export const contrastProblems = (page) => page.evaluate(() => {
  const parse = (c) => {
    const m = /rgba?\(([^)]+)\)/.exec(c);
    if (!m) {
      return null;
    }
    const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const channel = (v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  const lum = (c) => 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b);
  const bgOf = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) {
        return c;
      }
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!n.textContent.trim() || !el || el.closest('[hidden], .visually-hidden, script')) {
      continue;
    }
    const box = el.getBoundingClientRect();
    const cs = getComputedStyle(el);
    if (box.width === 0 || box.height === 0 || cs.visibility === 'hidden' || Number(cs.opacity) === 0) {
      continue;
    }
    const fg = parse(cs.color);
    const bg = bgOf(el);
    const a = fg.a; // text drawn with alpha: blend it over its background first
    const mixed = { r: fg.r * a + bg.r * (1 - a), g: fg.g * a + bg.g * (1 - a), b: fg.b * a + bg.b * (1 - a) };
    const l1 = lum(mixed);
    const l2 = lum(bg);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(cs.fontSize);
    const large = size >= 24 || (Number(cs.fontWeight) >= 700 && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) {
      out.push(`${el.tagName}.${el.className} "${n.textContent.trim().slice(0, 30)}": ${ratio.toFixed(2)}`);
    }
  }
  return out;
});

/** A new page of a new context at this viewport width (height 800, a phone's 740). */
export async function newPage(browser, width, errors, who, timeoutMs = 10_000) {
  const context = await browser.newContext({ viewport: { width, height: width < 500 ? 740 : 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.on('pageerror', (e) => errors.push(`${who}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket connection to .* failed|Failed to load resource/.test(m.text())) {
      errors.push(`${who} console: ${m.text()}`);
    }
  });
  return page;
}

export const connected = (page) => page.locator('[data-testid="connection-state"][data-state="connected"]').waitFor();
