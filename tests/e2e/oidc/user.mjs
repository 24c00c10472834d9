// The simulated user of the test providers (provider.mjs, login_provider.mjs): "alice" finishes
// each login interaction with the acr `acrFor(params)` picks and the amr that goes with it;
// consent is implicit (a first-party client).
export const ACR_AMR = {
  'urn:stepguard:aal1': ['pwd'],
  'urn:stepguard:aal2': ['pwd', 'otp'],
  'urn:stepguard:aal3': ['hwk', 'user'],
};

// The first acr the client asked for (`acr_values` or an essential `acr` claim), else aal1.
export function requestedAcr(params) {
  if (params.acr_values) return params.acr_values.split(' ')[0];
  const claims = params.claims ? JSON.parse(params.claims) : {};
  const acr = claims.id_token?.acr ?? claims.userinfo?.acr;
  return acr?.value ?? acr?.values?.[0] ?? 'urn:stepguard:aal1';
}

export function finishLogins(provider, acrFor) {
  provider.use(async (ctx, next) => {
    if (ctx.method !== 'GET' || !ctx.path.startsWith('/interaction/')) return next();
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const acr = acrFor(details.params);
    const result = details.prompt.name === 'login'
      ? { login: { accountId: 'alice', acr, amr: ACR_AMR[acr] ?? ['pwd'] } }
      : { consent: {} };
    ctx.respond = false;
    await provider.interactionFinished(ctx.req, ctx.res, result,
                                       { mergeWithLastSubmission: false });
  });
}
