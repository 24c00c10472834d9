// The bank's page script. The one line that matters: stepUpFetch instead of fetch.
import { stepUpFetch } from "/static/inline/stepguard.js";

const form = document.getElementById("transfer");
const result = document.getElementById("result");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = form.querySelector("button");
  button.disabled = true;
  result.textContent = "Sending…";
  try {
    const response = await stepUpFetch("/api/transfers", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({ amount: form.amount.value, payee: form.payee.value })
    });
    const data = await response.json().catch(() => ({}));
    if (response.ok) {
      result.textContent = `Sent ${data.amount} EUR to ${data.payee} (${data.id}).`;
    } else if (response.status === 401) {
      result.textContent = "Not confirmed: the transfer was not sent.";
    } else {
      result.textContent = `Not sent: ${data.error || response.status}.`;
    }
  } finally {
    button.disabled = false;
  }
});

// Ready: until now the button was disabled, so a click could not submit the form natively.
form.querySelector("button").disabled = false;
