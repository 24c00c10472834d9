"""The texts of the portal's script (static/stepguard.js) for the catalog: the page hands the
script their translations (`texts(language)`), keyed by the English text the script holds.
A test checks this list against every `t("…")` in the script."""

from __future__ import annotations

from stepguard.web.i18n import DEFAULT, translations
from stepguard.web.render import N_

JS_TEXTS = (
    N_("The server sent an address this page will not open."),
    N_("Continue"),
    N_("Done. If nothing happened, "),
    N_("No passkey answered within 60 seconds. Try again."),
    N_("The passkey request was cancelled or timed out. Try again, or choose another way."),
    N_("This passkey is already registered for your account."),
    N_("Passkeys cannot be used on this address."),
    N_("This browser or authenticator does not support the requested passkey."),
    N_("Something went wrong. Try again."),
    N_("Preparing…"),
    N_("Follow your browser's prompt to use your passkey."),
    N_("No passkey was chosen."),
    N_("Checking…"),
    N_("Done. Continuing…"),
    N_("Done."),
    N_("Signed in. Continuing…"),
    N_("Waiting for your answer on your other device…"),
    N_("Approved. Continuing…"),
    N_("The request was denied on your other device. Choose another way, or send a new push."),
    N_("The push request expired. Send a new one, or choose another way."),
    N_("Could not check the push request."),
    N_("Registering this browser…"),
    N_("This browser could not be added."),
    N_("This browser could not sign the answer."),
    N_("Copied. Paste them somewhere safe."),
    N_("Could not copy. Select the codes and copy them."),
    N_("Downloaded. Keep the file somewhere safe."),
)


def texts(language: str) -> dict[str, str]:
    """{English: translation} for the script, empty for English."""
    if language == DEFAULT:
        return {}
    say = translations(language).gettext
    return {text: str(say(text)) for text in JS_TEXTS}
