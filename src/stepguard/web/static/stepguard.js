/*
 * Stepguard portal: WebAuthn ceremonies and push-approval polling. No framework, no build step.
 * Loaded with <script src defer>; reads everything from data-* attributes and the
 * <meta name="csrf-token"> tag, so the page needs no inline script (strict CSP).
 *
 * WebAuthn buttons: data-webauthn="authenticate" | "register", data-begin-url, data-finish-url,
 *   and for registration data-label-input (id of the label field).
 *   1. POST begin URL (JSON body; {"label"} when registering) -> py_webauthn options_to_json output
 *      (or {"publicKey": ...}); base64url fields are decoded into ArrayBuffers.
 *   2. navigator.credentials.create/get with a 60 s AbortController.
 *   3. POST the credential as py_webauthn's parse_*_credential_json expects (base64url fields;
 *      registration also carries a top-level "label") -> {"redirect": url} or {"error": text}.
 * Push polling: an element with data-push-status-url and data-push-expires-in (seconds); GET every
 *   2 s until the JSON answer has a redirect or a final status (approved/denied/expired).
 * Push devices (WebCrypto ECDSA P-256, private key non-extractable, kept in IndexedDB
 *   "stepguard-push" / "devices" under the device id the server gave it):
 *   - enrolment: a button with data-push-enrol, data-begin-url, data-finish-url, data-label-input.
 *     POST begin -> {enrolment_id, nonce}; make the key pair; sign
 *     "stepguard-push-enrolment-v1\n<enrolment_id>\n<nonce>"; POST finish {enrolment_id, alg,
 *     public_key (SPKI), signature (raw r||s), label} (base64url) -> {device_id, redirect}; keep the
 *     private key under device_id, then follow the redirect.
 *   - approval: a [data-push-approve] element (data-push-id, -nonce, -digest, -devices = ids) around
 *     forms marked data-push-answer (fields picked, device_id, signature). On submit the held key
 *     signs "stepguard-push-approval-v1\n<id>\n<nonce>\n<digest>\n<picked>" and the form is sent
 *     with device_id and signature filled in. Without a key the forms are disabled.
 * Errors go to the role="alert" region (#sg-alert), progress to #sg-status.
 */
(function () {
  "use strict";

  // Texts in the page's language: the server puts {English: translation} in
  // <script type="application/json" id="sg-texts"> (data, not code: allowed by the CSP).
  var TEXTS = (function () {
    var node = document.getElementById && document.getElementById("sg-texts");
    try {
      return node ? JSON.parse(node.textContent || "{}") : {};
    } catch (ignored) {
      return {};
    }
  })();

  function t(text) {
    return Object.prototype.hasOwnProperty.call(TEXTS, text) ? TEXTS[text] : text;
  }

  var CEREMONY_TIMEOUT_MS = 60000;
  var POLL_INTERVAL_MS = 2000;
  var CONTINUE_AFTER_MS = 4000;

  // --- base64url <-> ArrayBuffer ---------------------------------------------------------------

  function base64urlToBuffer(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) {
      base64 += "=";
    }
    var binary = window.atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function bufferToBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) {
      binary += String.fromCharCode(bytes[i]);
    }
    return window.btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // --- page helpers ----------------------------------------------------------------------------

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  function showError(message) {
    var region = document.getElementById("sg-alert");
    if (region) {
      region.textContent = message;
      region.focus();
    }
    showStatus("");
  }

  function clearError() {
    var region = document.getElementById("sg-alert");
    if (region) {
      region.textContent = "";
    }
  }

  function showStatus(message) {
    var region = document.getElementById("sg-status");
    if (region && region.textContent !== message) {
      region.textContent = message;
    }
  }

  function followRedirect(url) {
    var target = new URL(url, window.location.href);
    if (target.protocol !== "https:" && target.protocol !== "http:") {
      throw new Error(t("The server sent an address this page will not open."));
    }
    window.location.assign(target.href);
    // A download, or an address that only differs by its #fragment, leaves this page in place:
    // never leave "Continuing…" on screen without a way on.
    window.setTimeout(function () { offerContinue(target.href); }, CONTINUE_AFTER_MS);
  }

  function offerContinue(href) {
    var region = document.getElementById("sg-status");
    if (!region || typeof document.createElement !== "function") {
      return;
    }
    var link = document.createElement("a");
    link.href = href;
    link.textContent = t("Continue");
    region.textContent = t("Done. If nothing happened, ");
    region.appendChild(link);
    region.appendChild(document.createTextNode("."));
  }

  function readJson(response) {
    return response.text().then(function (text) {
      var data = {};
      if (text) {
        try {
          data = JSON.parse(text);
        } catch (ignored) {
          data = {};
        }
      }
      if (!response.ok) {
        throw new Error(data.error || data.message ||
          "The server refused the request (HTTP " + response.status + ").");
      }
      return data;
    });
  }

  function postJson(url, body) {
    return window.fetch(url, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-CSRF-Token": csrfToken()
      },
      body: JSON.stringify(body)
    }).then(readJson);
  }

  // --- WebAuthn: options in --------------------------------------------------------------------

  function withIds(descriptors) {
    return (descriptors || []).map(function (descriptor) {
      return Object.assign({}, descriptor, { id: base64urlToBuffer(descriptor.id) });
    });
  }

  function creationOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = base64urlToBuffer(json.challenge);
    options.user = Object.assign({}, json.user, { id: base64urlToBuffer(json.user.id) });
    options.excludeCredentials = withIds(json.excludeCredentials);
    return options;
  }

  function requestOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = base64urlToBuffer(json.challenge);
    options.allowCredentials = withIds(json.allowCredentials);
    return options;
  }

  // --- WebAuthn: credential out (py_webauthn parse_*_credential_json) --------------------------

  function commonFields(credential) {
    return {
      id: credential.id,
      rawId: bufferToBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: typeof credential.getClientExtensionResults === "function"
        ? credential.getClientExtensionResults() : {}
    };
  }

  function registrationJson(credential) {
    var response = credential.response;
    var payload = commonFields(credential);
    payload.response = {
      clientDataJSON: bufferToBase64url(response.clientDataJSON),
      attestationObject: bufferToBase64url(response.attestationObject),
      transports: typeof response.getTransports === "function" ? response.getTransports() : []
    };
    return payload;
  }

  function authenticationJson(credential) {
    var response = credential.response;
    var payload = commonFields(credential);
    payload.response = {
      clientDataJSON: bufferToBase64url(response.clientDataJSON),
      authenticatorData: bufferToBase64url(response.authenticatorData),
      signature: bufferToBase64url(response.signature),
      userHandle: response.userHandle ? bufferToBase64url(response.userHandle) : null
    };
    return payload;
  }

  // --- WebAuthn: ceremony ----------------------------------------------------------------------

  function ceremonyMessage(error, aborted) {
    if (aborted) {
      return t("No passkey answered within 60 seconds. Try again.");
    }
    switch (error && error.name) {
      case "NotAllowedError":
        return t("The passkey request was cancelled or timed out. Try again, or choose another way.");
      case "InvalidStateError":
        return t("This passkey is already registered for your account.");
      case "SecurityError":
        return t("Passkeys cannot be used on this address.");
      case "NotSupportedError":
        return t("This browser or authenticator does not support the requested passkey.");
      default:
        return (error && error.message) || t("Something went wrong. Try again.");
    }
  }

  function labelFor(button) {
    var input = document.getElementById(button.getAttribute("data-label-input") || "");
    return input ? input.value.trim() : "";
  }

  function runCeremony(button) {
    var register = button.getAttribute("data-webauthn") === "register";
    var label = register ? labelFor(button) : "";
    var controller = new AbortController();
    var timer = window.setTimeout(function () { controller.abort(); }, CEREMONY_TIMEOUT_MS);
    button.disabled = true;
    clearError();
    showStatus(t("Preparing…"));
    return postJson(button.getAttribute("data-begin-url"), register ? { label: label } : {})
      .then(function (data) {
        var json = data.publicKey || data;
        showStatus(t("Follow your browser's prompt to use your passkey."));
        return register
          ? navigator.credentials.create({ publicKey: creationOptions(json), signal: controller.signal })
          : navigator.credentials.get({ publicKey: requestOptions(json), signal: controller.signal });
      })
      .then(function (credential) {
        if (!credential) {
          throw new Error(t("No passkey was chosen."));
        }
        var payload = register ? registrationJson(credential) : authenticationJson(credential);
        if (register) {
          payload.label = label;
        }
        showStatus(t("Checking…"));
        return postJson(button.getAttribute("data-finish-url"), payload);
      })
      .then(function (result) {
        if (result.redirect) {
          showStatus(t("Done. Continuing…"));
          followRedirect(result.redirect);
        } else {
          showStatus(t("Done."));
        }
      })
      .catch(function (error) {
        showError(ceremonyMessage(error, controller.signal.aborted));
      })
      .finally(function () {
        window.clearTimeout(timer);
        button.disabled = false;
      });
  }

  function setUpWebauthn() {
    var buttons = document.querySelectorAll("[data-webauthn]");
    var supported = typeof window.PublicKeyCredential === "function" && !!navigator.credentials;
    buttons.forEach(function (button) {
      if (supported) {
        button.hidden = false;
        button.addEventListener("click", function () { runCeremony(button); });
      }
    });
    if (!supported) {
      document.querySelectorAll("[data-webauthn-unsupported]").forEach(function (note) {
        note.hidden = false;
      });
    }
  }

  // --- passkey sign-in: a button, and conditional UI (autofill in the username field) --------
  // POST begin -> {publicKey, ceremony}; navigator.credentials.get (mediation "conditional" for
  // the autofill, which waits for the user without a time limit); POST finish {ceremony,
  // credential} -> {redirect}. Starting the button's ceremony cancels the waiting autofill one.

  function setUpPasskeySignIn() {
    var box = document.querySelector("[data-passkey-sign-in]");
    if (!box || typeof window.PublicKeyCredential !== "function" || !navigator.credentials) {
      return;
    }
    box.hidden = false;
    var waiting = null;

    function signIn(mediation) {
      var controller = new AbortController();
      var timer = mediation ? null :
        window.setTimeout(function () { controller.abort(); }, CEREMONY_TIMEOUT_MS);
      var ceremony = "";
      if (!mediation) {
        if (waiting) {
          waiting.abort();
        }
        clearError();
        showStatus(t("Follow your browser's prompt to use your passkey."));
      } else {
        waiting = controller;
      }
      return postJson(box.getAttribute("data-begin-url"), {})
        .then(function (data) {
          ceremony = data.ceremony;
          var request = { publicKey: requestOptions(data.publicKey), signal: controller.signal };
          if (mediation) {
            request.mediation = mediation;
          }
          return navigator.credentials.get(request);
        })
        .then(function (credential) {
          if (!credential) {
            throw new Error(t("No passkey was chosen."));
          }
          showStatus(t("Checking…"));
          return postJson(box.getAttribute("data-finish-url"),
            { ceremony: ceremony, credential: authenticationJson(credential) });
        })
        .then(function (result) {
          showStatus(t("Signed in. Continuing…"));
          followRedirect(result.redirect || "/account");
        })
        .catch(function (error) {
          if (mediation && controller.signal.aborted) {
            return; // the autofill ceremony gave way to the button's
          }
          showError(ceremonyMessage(error, !mediation && controller.signal.aborted));
        })
        .finally(function () {
          if (timer) {
            window.clearTimeout(timer);
          }
        });
    }

    box.querySelector("[data-passkey-button]").addEventListener("click", function () {
      signIn(null);
    });
    var conditional = window.PublicKeyCredential.isConditionalMediationAvailable;
    if (typeof conditional === "function") {
      conditional.call(window.PublicKeyCredential).then(function (available) {
        if (available) {
          signIn("conditional");
        }
      }).catch(function () {});
    }
  }

  // --- push approval polling -------------------------------------------------------------------

  var PUSH_TEXT = {
    pending: t("Waiting for your answer on your other device…"),
    approved: t("Approved. Continuing…"),
    denied: t("The request was denied on your other device. Choose another way, or send a new push."),
    expired: t("The push request expired. Send a new one, or choose another way.")
  };

  function pollPush(element) {
    var url = element.getAttribute("data-push-status-url");
    var seconds = Number(element.getAttribute("data-push-expires-in") || "120");
    if (!isFinite(seconds)) {
      seconds = 120;
    }
    var deadline = Date.now() + seconds * 1000;

    function setText(text) {
      if (element.textContent !== text) {
        element.textContent = text;
      }
    }

    function schedule() {
      if (Date.now() >= deadline) {
        setText(PUSH_TEXT.expired);
        return;
      }
      window.setTimeout(tick, POLL_INTERVAL_MS);
    }

    function tick() {
      window.fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Accept": "application/json" }
      })
        .then(readJson)
        .then(function (data) {
          if (data.redirect) {
            setText(PUSH_TEXT.approved);
            followRedirect(data.redirect);
            return;
          }
          var status = data.status || "pending";
          setText(data.message || PUSH_TEXT[status] || PUSH_TEXT.pending);
          if (status === "pending") {
            schedule();
          }
        })
        .catch(function (error) {
          if (error instanceof TypeError) {
            schedule();  // network hiccup: try again until the push expires
          } else {
            showError(error.message || t("Could not check the push request."));
          }
        });
    }

    schedule();
  }

  function setUpPush() {
    document.querySelectorAll("[data-push-status-url]").forEach(pollPush);
  }

  // --- push devices: a WebCrypto key pair per browser, private half in IndexedDB -------------

  var KEY_DB = "stepguard-push";
  var KEY_STORE = "devices";
  var SIGN_ALGORITHM = { name: "ECDSA", hash: "SHA-256" };

  function openKeys() {
    return new Promise(function (resolve, reject) {
      var request = window.indexedDB.open(KEY_DB, 1);
      request.onupgradeneeded = function () {
        request.result.createObjectStore(KEY_STORE, { keyPath: "id" });
      };
      request.onsuccess = function () { resolve(request.result); };
      request.onerror = function () { reject(request.error); };
    });
  }

  function keyStore(mode, action) {
    return openKeys().then(function (db) {
      return new Promise(function (resolve, reject) {
        var transaction = db.transaction(KEY_STORE, mode);
        var request = action(transaction.objectStore(KEY_STORE));
        transaction.oncomplete = function () { db.close(); resolve(request.result); };
        transaction.onerror = function () { db.close(); reject(transaction.error); };
      });
    });
  }

  function deviceSupported() {
    return !!(window.isSecureContext && window.crypto && window.crypto.subtle && window.indexedDB);
  }

  function signText(privateKey, text) {
    return window.crypto.subtle.sign(SIGN_ALGORITHM, privateKey, new TextEncoder().encode(text));
  }

  function enrolDevice(button) {
    var input = document.getElementById(button.getAttribute("data-label-input") || "");
    var label = input ? input.value.trim() : "";
    var enrolment;
    var keys;
    button.disabled = true;
    clearError();
    showStatus(t("Preparing…"));
    return postJson(button.getAttribute("data-begin-url"), {})
      .then(function (data) {
        enrolment = data;
        return window.crypto.subtle.generateKey(
          { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"]);
      })
      .then(function (pair) {
        keys = pair;
        var message = ["stepguard-push-enrolment-v1", enrolment.enrolment_id, enrolment.nonce];
        return Promise.all([
          window.crypto.subtle.exportKey("spki", pair.publicKey),
          signText(pair.privateKey, message.join("\n"))
        ]);
      })
      .then(function (parts) {
        showStatus(t("Registering this browser…"));
        return postJson(button.getAttribute("data-finish-url"), {
          enrolment_id: enrolment.enrolment_id,
          alg: "ES256",
          public_key: bufferToBase64url(parts[0]),
          signature: bufferToBase64url(parts[1]),
          label: label
        });
      })
      .then(function (result) {
        return keyStore("readwrite", function (store) {
          return store.put({ id: result.device_id, key: keys.privateKey, alg: "ES256" });
        }).then(function () { return result; });
      })
      .then(function (result) {
        showStatus(t("Done. Continuing…"));
        followRedirect(result.redirect || "/account");
      })
      .catch(function (error) {
        showError((error && error.message) || t("This browser could not be added."));
        button.disabled = false;
      });
  }

  function heldKey(ids) {
    return keyStore("readonly", function (store) { return store.getAll(); })
      .then(function (entries) {
        var found = (entries || []).filter(function (entry) {
          return ids.indexOf(entry.id) !== -1;
        });
        return found.length ? found[0] : null;
      });
  }

  function setUpApproval(container) {
    var ids = (container.getAttribute("data-push-devices") || "").split(" ").filter(Boolean);
    var forms = container.querySelectorAll("form[data-push-answer]");
    var noDevice = container.querySelector("[data-push-no-device]");

    function disable() {
      forms.forEach(function (form) {
        form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
      });
      if (noDevice) {
        noDevice.hidden = false;
      }
    }

    if (!deviceSupported() || !ids.length) {
      disable();
      return;
    }
    heldKey(ids).then(function (device) {
      if (!device) {
        disable();
        return;
      }
      forms.forEach(function (form) {
        form.addEventListener("submit", function (event) {
          event.preventDefault();
          var message = [
            "stepguard-push-approval-v1",
            container.getAttribute("data-push-id"),
            container.getAttribute("data-push-nonce"),
            container.getAttribute("data-push-digest"),
            String(Number(form.elements.picked.value))
          ].join("\n");
          form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
          signText(device.key, message).then(function (signature) {
            form.elements.device_id.value = device.id;
            form.elements.signature.value = bufferToBase64url(signature);
            form.submit();
          }).catch(function (error) {
            showError((error && error.message) || t("This browser could not sign the answer."));
          });
        });
        // Answerable only now: the buttons start disabled, so that a click before this
        // handler exists cannot post an unsigned answer.
        form.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
      });
    }).catch(function () { disable(); });
  }

  function setUpDevices() {
    document.querySelectorAll("[data-push-enrol]").forEach(function (button) {
      if (deviceSupported()) {
        button.hidden = false;
        button.addEventListener("click", function () { enrolDevice(button); });
      } else {
        document.querySelectorAll("[data-push-unsupported]").forEach(function (note) {
          note.hidden = false;
        });
      }
    });
    document.querySelectorAll("[data-push-approve]").forEach(setUpApproval);
  }

  // --- the inline dialog's frame (or popup): talk to the application page -------------------
  // Only in the embedded view (body[data-inline-origin], set by the server to an allowed
  // origin), only to that exact origin, and only "ready", "resize", "passed" and "cancelled"
  // with the challenge id: no code, assertion or token ever leaves this page.

  function inlineTarget() {
    var body = document.body;
    var origin = body && body.getAttribute ? body.getAttribute("data-inline-origin") : null;
    if (!origin) {
      return null;
    }
    var parent = window.parent !== window ? window.parent : window.opener;
    return parent ? { window: parent, origin: origin } : null;
  }

  function tellParent(type, extra) {
    var target = inlineTarget();
    if (!target) {
      return;
    }
    var message = Object.assign({
      source: "stepguard",
      version: 1,
      type: type,
      challenge: document.body.getAttribute("data-inline-challenge") || ""
    }, extra || {});
    target.window.postMessage(message, target.origin);
    if ((type === "passed" || type === "cancelled") && window.opener && window.parent === window) {
      window.close();  // the popup's work is done
    }
  }

  function setUpInline() {
    if (!inlineTarget()) {
      return;
    }
    document.querySelectorAll("[data-inline-cancel]").forEach(function (button) {
      button.addEventListener("click", function () { tellParent("cancelled"); });
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        tellParent("cancelled");
      }
    });
    if (document.querySelector("[data-inline-done]")) {
      tellParent("passed");
      return;
    }
    if (document.querySelector("[data-inline-signed-out]")) {
      tellParent("signed_out");
    }
    var report = function () {
      tellParent("resize", { height: Math.ceil(document.documentElement.scrollHeight) });
    };
    tellParent("ready", { title: document.title });
    report();
    if (typeof window.ResizeObserver === "function") {
      new window.ResizeObserver(report).observe(document.body);
    }
  }

  function focusError() {
    // A page that opens with an error (a failed form, after its redirect): start there.
    var region = document.getElementById("sg-alert");
    if (region && region.textContent && region.textContent.trim() && region.focus) {
      region.focus();
    }
  }

  // --- recovery codes: copy and download (made in the browser: the server keeps no copy) ----

  function codesText(listId) {
    var list = document.getElementById(listId);
    if (!list) {
      return "";
    }
    var codes = [];
    list.querySelectorAll("code").forEach(function (code) { codes.push(code.textContent.trim()); });
    return codes.join("\n") + "\n";
  }

  function setUpCodes() {
    document.querySelectorAll("[data-codes-copy]").forEach(function (button) {
      if (!navigator.clipboard || !window.isSecureContext) {
        return;
      }
      button.hidden = false;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(codesText(button.getAttribute("data-codes-copy")))
          .then(function () { showStatus(t("Copied. Paste them somewhere safe.")); })
          .catch(function () { showError(t("Could not copy. Select the codes and copy them.")); });
      });
    });
    document.querySelectorAll("[data-codes-download]").forEach(function (button) {
      if (typeof window.Blob !== "function" || !window.URL || !URL.createObjectURL) {
        return;
      }
      button.hidden = false;
      button.addEventListener("click", function () {
        var text = codesText(button.getAttribute("data-codes-download"));
        var url = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
        var link = document.createElement("a");
        link.href = url;
        link.download = button.getAttribute("data-filename") || "recovery-codes.txt";
        document.body.appendChild(link);
        link.click();
        link.remove();
        window.setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
        showStatus(t("Downloaded. Keep the file somewhere safe."));
      });
    });
  }

  function start() {
    focusError();
    setUpCodes();
    setUpInline();
    setUpWebauthn();
    setUpPasskeySignIn();
    setUpPush();
    setUpDevices();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
