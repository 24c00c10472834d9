/**
 * stepguard.js — inline step-up for applications behind Stepguard. An ES module, no build step.
 *
 *   import { stepUpFetch } from "https://auth.example.com/static/inline/stepguard.js";
 *   const response = await stepUpFetch("/transfers", { method: "POST", body: form });
 *
 * When a request gets Stepguard's step-up answer (a 401 with `WWW-Authenticate: Bearer
 * error="insufficient_user_authentication"`, RFC 9470), a modal dialog opens on the page. The
 * dialog frames Stepguard's own step-up page (its origin, not the application's): the reasons,
 * the values being approved and the passkey / code / push step all happen there, so no code or
 * assertion ever passes through the application's DOM. When the frame reports "passed", the
 * original request is sent again, once, and its response is returned to the caller. When the
 * user cancels, the caller gets the original 401 response.
 *
 * Messages from the frame are accepted only from Stepguard's origin, from that frame's window,
 * for that challenge. Challenge addresses are accepted only on Stepguard's origin.
 *
 * Exports: stepUpFetch(input, init), installFetch(), enhanceForms(root), challengeOf(response),
 * confirmStepUp(challenge, options), configure(options), StepguardStepUp (the element,
 * <stepguard-step-up>).
 */

const MODULE_ORIGIN = new URL(import.meta.url).origin;
const STEP_UP_ERROR = "insufficient_user_authentication";
const CHALLENGE_PATH = /^\/step-up\/([A-Za-z0-9_-]{1,128})$/;
const FRAME_READY_MS = 8000;

// The dialog's own texts (the frame's come from Stepguard in the same language).
const TEXTS = {
  en: {
    title: "Confirm it's you",
    cancel: "Cancel",
    popup: "Continue in the window that opened. Waiting for it…",
    openPopup: "Open in a new window",
    blocked: "The confirmation did not load here."
  },
  de: {
    title: "Bestätigen Sie, dass Sie es sind",
    cancel: "Abbrechen",
    popup: "Fahren Sie im geöffneten Fenster fort. Wir warten darauf …",
    openPopup: "In einem neuen Fenster öffnen",
    blocked: "Die Bestätigung konnte hier nicht geladen werden."
  }
};

/** The page's language (`<html lang>`), if Stepguard speaks it; else English. */
function pageLanguage() {
  const lang = (document.documentElement.lang || "en").toLowerCase().split("-")[0];
  return Object.prototype.hasOwnProperty.call(TEXTS, lang) ? lang : "en";
}

const settings = {
  portal: MODULE_ORIGIN, // Stepguard's origin: where the module was served from
  mode: "frame",         // "frame" (a dialog on this page) or "popup" (a small window)
  texts: {}              // overrides of the dialog's texts (configure({texts}))
};

/** Change the portal origin, the default mode or the dialog's own texts. */
export function configure(options = {}) {
  if (options.portal) {
    settings.portal = new URL(options.portal).origin;
  }
  if (options.mode === "frame" || options.mode === "popup") {
    settings.mode = options.mode;
  }
  Object.assign(settings.texts, options.texts || {});
}

// --- recognising the step-up answer -----------------------------------------------------------

function authParam(header, name) {
  const match = new RegExp(`(?:^|[\\s,])${name}="([^"]*)"`).exec(header);
  return match ? match[1] : null;
}

function challengeFromUrl(text) {
  if (!text) {
    return null;
  }
  let url;
  try {
    url = new URL(text, settings.portal);
  } catch (ignored) {
    return null;
  }
  const match = CHALLENGE_PATH.exec(url.pathname);
  if (url.origin !== settings.portal || !match) {
    return null; // only challenges on Stepguard's own origin
  }
  return { id: match[1], url: url.origin + url.pathname };
}

/**
 * The step-up challenge a response asks for ({id, url, reasons}), or null. Reads the RFC 9470
 * header (its `stepguard_challenge` parameter survives proxies that drop the body, such as nginx
 * auth_request) and else the JSON body; the response itself stays unread.
 */
export async function challengeOf(response) {
  if (response.status !== 401) {
    return null;
  }
  const header = response.headers.get("WWW-Authenticate") || "";
  let body = null;
  try {
    body = await response.clone().json();
  } catch (ignored) {
    body = null;
  }
  const stepUp = authParam(header, "error") === STEP_UP_ERROR ||
    (body !== null && body.error === STEP_UP_ERROR);
  if (!stepUp) {
    return null;
  }
  const challenge = challengeFromUrl(authParam(header, "stepguard_challenge")) ||
    challengeFromUrl(body && typeof body.challenge_url === "string" ? body.challenge_url : null);
  if (challenge) {
    challenge.reasons = body && Array.isArray(body.reasons) ? body.reasons.map(String) : [];
  }
  return challenge;
}

// --- the dialog ---------------------------------------------------------------------------------

const STYLE = `
:host { all: initial; }
dialog { border: 0; border-radius: 12px; padding: 0; width: min(34rem, calc(100vw - 1rem));
  max-height: calc(100vh - 1rem); box-shadow: 0 10px 40px rgba(0,0,0,.35); background: #fff;
  color: #111; font: 16px/1.5 system-ui, sans-serif; }
dialog::backdrop { background: rgba(0,0,0,.55); }
.bar { display: flex; justify-content: space-between; align-items: center; gap: .5rem;
  padding: .5rem .75rem; border-bottom: 1px solid #ccc; }
h2 { font-size: 1rem; margin: 0; }
button { font: inherit; padding: .4rem .9rem; border-radius: 6px; border: 1px solid #444;
  background: #fff; color: #111; cursor: pointer; min-height: 44px; }
button:focus-visible { outline: 3px solid #1a56db; outline-offset: 2px; }
iframe { display: block; width: 100%; height: 32rem; max-height: calc(100vh - 5rem);
  border: 0; background: #fff; }
.note { margin: 1rem .75rem; }
[hidden] { display: none !important; }
`;

// The last control that had focus: a page often disables the button that sent the request
// (which drops its focus) before the dialog opens; focus returns there afterwards.
let lastFocused = null;
document.addEventListener("focusin", (event) => {
  if (!(event.target instanceof StepguardStepUp)) {
    lastFocused = event.target;
  }
}, true);

/** Focus goes back where it was; to a control the page disabled meanwhile once it is enabled. */
function restoreFocus(element) {
  if (!element || typeof element.focus !== "function" || !element.isConnected) {
    return;
  }
  if (!element.disabled) {
    element.focus();
    return;
  }
  const observer = new MutationObserver(() => {
    if (!element.disabled) {
      observer.disconnect();
      element.focus();
    }
  });
  observer.observe(element, { attributes: true, attributeFilter: ["disabled"] });
  window.setTimeout(() => observer.disconnect(), 30000);
}

/** <stepguard-step-up>: a modal dialog that frames Stepguard's step-up page for a challenge. */
export class StepguardStepUp extends HTMLElement {
  constructor() {
    super();
    this.attachShadow({ mode: "open" });
    // A constructed style sheet: allowed under the strictest style-src (no inline <style>).
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(STYLE);
    this.shadowRoot.adoptedStyleSheets = [sheet];
    this.shadowRoot.innerHTML = `
      <dialog aria-labelledby="sg-title">
        <div class="bar"><h2 id="sg-title"></h2><button type="button" id="sg-cancel"></button></div>
        <iframe id="sg-frame" allow="publickey-credentials-get; publickey-credentials-create"
                referrerpolicy="no-referrer"></iframe>
        <div class="note" id="sg-note" role="status" hidden>
          <p id="sg-note-text"></p>
          <button type="button" id="sg-popup" hidden></button>
        </div>
      </dialog>`;
    this.dialog = this.shadowRoot.querySelector("dialog");
    this.frame = this.shadowRoot.getElementById("sg-frame");
    this.note = this.shadowRoot.getElementById("sg-note");
  }

  /** Run the step-up for `challenge`; resolves "passed" or "cancelled". */
  run(challenge, { mode = settings.mode } = {}) {
    const language = pageLanguage();
    const texts = Object.assign({}, TEXTS[language], settings.texts);
    const root = this.shadowRoot;
    root.getElementById("sg-title").textContent = texts.title;
    root.getElementById("sg-cancel").textContent = texts.cancel;
    const address = `${settings.portal}/step-up/${challenge.id}/inline?view=inline&origin=` +
      encodeURIComponent(window.location.origin) + `&lang=${language}`;
    const active = document.activeElement;
    const opener = active && active !== document.body ? active : lastFocused;
    return new Promise((resolve) => {
      let popup = null;
      let ready = false;
      let done = false;
      const source = () => (popup || this.frame.contentWindow);
      const finish = (outcome) => {
        if (done) {
          return;
        }
        done = true;
        window.removeEventListener("message", onMessage);
        window.clearInterval(watch);
        window.clearTimeout(slow);
        if (popup && !popup.closed) {
          popup.close();
        }
        this.frame.src = "about:blank";
        if (this.dialog.open) {
          this.dialog.close();
        }
        this.remove();
        restoreFocus(opener);
        resolve(outcome);
      };
      const onMessage = (event) => {
        const data = event.data;
        if (event.origin !== settings.portal || event.source !== source() || !data ||
            data.source !== "stepguard" || data.challenge !== challenge.id) {
          return; // anyone else's message, or another challenge's
        }
        if (data.type === "passed") {
          finish("passed");
        } else if (data.type === "cancelled") {
          finish("cancelled");
        } else if (data.type === "signed_out" && !popup) {
          offerPopup(); // the browser kept Stepguard's cookie out of the frame (third party)
        } else if (data.type === "ready") {
          ready = true;
          this.frame.title = `${texts.title} (Stepguard)`;
        } else if (data.type === "resize" && !popup && Number.isFinite(data.height)) {
          const most = window.innerHeight - 80;
          this.frame.style.height = `${Math.max(160, Math.min(most, data.height))}px`;
        }
      };
      const openPopup = () => {
        popup = window.open(address, "stepguard-step-up", "popup,width=520,height=720");
        this.frame.hidden = true;
        this.note.hidden = false;
        root.getElementById("sg-note-text").textContent = texts.popup;
        root.getElementById("sg-popup").hidden = true;
      };
      window.addEventListener("message", onMessage);
      root.getElementById("sg-cancel").onclick = () => finish("cancelled");
      this.dialog.addEventListener("cancel", (event) => {
        event.preventDefault(); // Escape: a decision, not a silent close
        finish("cancelled");
      });
      const watch = window.setInterval(() => {
        if (popup && popup.closed) {
          finish("cancelled");
        }
      }, 500);
      const offerPopup = () => {
        this.frame.hidden = true;
        this.note.hidden = false;
        root.getElementById("sg-note-text").textContent = texts.blocked;
        const button = root.getElementById("sg-popup");
        button.textContent = texts.openPopup;
        button.hidden = false;
        button.onclick = openPopup;
        button.focus();
      };
      const slow = window.setTimeout(() => {
        if (!ready && !popup) { // the frame did not load (refused, offline, blocked)
          offerPopup();
        }
      }, FRAME_READY_MS);
      this.frame.title = `${texts.title} (Stepguard)`;
      this.dialog.showModal();
      if (mode === "popup") {
        openPopup();
      } else {
        this.frame.src = address;
        this.frame.focus();
      }
    });
  }
}

if (!customElements.get("stepguard-step-up")) {
  customElements.define("stepguard-step-up", StepguardStepUp);
}

/** Show the dialog for a challenge; resolves "passed" or "cancelled". */
export function confirmStepUp(challenge, options = {}) {
  const element = document.createElement("stepguard-step-up");
  document.body.appendChild(element);
  return element.run(challenge, options);
}

// --- fetch and forms ------------------------------------------------------------------------------

/**
 * `fetch`, with Stepguard's step-up handled in a dialog: on a step-up answer the user confirms,
 * then the same request is sent once more and that response is returned. Declined: the
 * original 401 response. The request is copied before it is first sent, so bodies are replayed
 * exactly.
 */
export async function stepUpFetch(input, init, options = {}) {
  const request = new Request(input, init);
  const again = request.clone();
  const first = await (options.fetch || window.fetch)(request);
  const challenge = await challengeOf(first);
  if (!challenge) {
    return first;
  }
  const outcome = await confirmStepUp(challenge, options);
  if (outcome !== "passed") {
    return first;
  }
  return (options.fetch || window.fetch)(again);
}

/** Make every `fetch` on this page handle step-up (opt-in); returns a function that undoes it. */
export function installFetch() {
  const original = window.fetch;
  window.fetch = (input, init) => stepUpFetch(input, init, { fetch: original });
  return () => { window.fetch = original; };
}

function formRequest(form, submitter) {
  const method = (form.getAttribute("method") || "GET").toUpperCase();
  const data = new FormData(form, submitter || undefined);
  const url = new URL(form.action, window.location.href);
  if (method === "GET") {
    url.search = new URLSearchParams(data).toString();
    return new Request(url, { method, credentials: "same-origin" });
  }
  const multipart = (form.enctype || "").toLowerCase() === "multipart/form-data";
  return new Request(url, {
    method,
    credentials: "same-origin",
    body: multipart ? data : new URLSearchParams(data)
  });
}

async function showResponse(response) {
  if (response.redirected) {
    window.location.assign(response.url);
    return;
  }
  const html = await response.text();
  document.open();
  document.write(html);
  document.close();
}

/**
 * Forms marked `data-stepguard` (under `root`) are sent with `stepUpFetch`. The result is
 * offered first as a cancelable `stepguard:response` event ({detail: {response}}) on the form;
 * by default a redirect is followed and any other answer replaces the page. A declined step-up
 * fires `stepguard:declined` and leaves the form as it was.
 */
export function enhanceForms(root = document) {
  root.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-stepguard")) {
      return;
    }
    event.preventDefault();
    const response = await stepUpFetch(formRequest(form, event.submitter));
    const challenge = await challengeOf(response);
    if (challenge) {
      form.dispatchEvent(new CustomEvent("stepguard:declined", { bubbles: true, detail: { response } }));
      return;
    }
    const shown = form.dispatchEvent(new CustomEvent("stepguard:response",
      { bubbles: true, cancelable: true, detail: { response } }));
    if (shown) {
      await showResponse(response);
    }
  });
}
