// A real OpenID provider (oidc-provider 9, an OpenID-certified implementation) for Stepguard's
// bearer-token end-to-end tests. Started by tests/e2e/test_oidc_step_up.py on 127.0.0.1.
//
// Environment: OIDC_PORT, OIDC_JWKS_FILE (private signing keys, first one signs),
// OIDC_AUDIENCE and OIDC_OTHER_AUDIENCE (two resource servers issuing JWT access tokens),
// OIDC_REDIRECT_URI (the test client's redirect URI; never actually served).
//
// The simulated user completes every login with the first acr the client asked for (from
// `acr_values` or an essential `acr` claim request), aal1 otherwise, and the amr that goes with
// it. Consent is implicit (a first-party client). JWT access tokens carry `acr`, `amr`, the
// user's `groups`, and `auth_time` only when the client asked for it (max_age, prompt=login or
// an auth_time claim request), mirroring the OpenID rule for ID tokens.
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const env = process.env;
const port = Number(env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const CLIENT_ID = 'stepguard-e2e';
const ACR_AMR = {
  'urn:stepguard:aal1': ['pwd'],
  'urn:stepguard:aal2': ['pwd', 'otp'],
  'urn:stepguard:aal3': ['hwk', 'user'],
};
const RESOURCES = [env.OIDC_AUDIENCE, env.OIDC_OTHER_AUDIENCE];

function requestedAcr(params) {
  if (params.acr_values) return params.acr_values.split(' ')[0];
  const claims = params.claims ? JSON.parse(params.claims) : {};
  const acr = claims.id_token?.acr ?? claims.userinfo?.acr;
  return acr?.value ?? acr?.values?.[0] ?? 'urn:stepguard:aal1';
}

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    token_endpoint_auth_method: 'none',
    redirect_uris: [env.OIDC_REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: JSON.parse(readFileSync(env.OIDC_JWKS_FILE, 'utf8')),
  acrValues: Object.keys(ACR_AMR),
  claims: { openid: ['sub'], profile: ['groups'] },
  cookies: { keys: ['stepguard-e2e-cookie-key'] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    claimsParameter: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => env.OIDC_AUDIENCE,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, resource) {
        if (!RESOURCES.includes(resource)) throw new errors.InvalidTarget();
        return {
          scope: 'api', audience: resource, accessTokenFormat: 'jwt', accessTokenTTL: 300,
          jwt: { sign: { alg: env.OIDC_ALG || 'ES256' } },
        };
      },
    },
  },
  async findAccount(ctx, sub) {
    return { accountId: sub, claims: () => ({ sub, groups: ['staff'] }) };
  },
  async loadExistingGrant(ctx) {
    const { client, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    const grant = grantId ? await ctx.oidc.provider.Grant.find(grantId)
      : new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope('openid profile');
    grant.addOIDCClaims(['sub', 'groups', 'acr', 'amr', 'auth_time']);
    for (const resource of RESOURCES) grant.addResourceScope(resource, 'api');
    await grant.save();
    return grant;
  },
  async extraTokenClaims(ctx, token) {
    const code = ctx.oidc.entities.AuthorizationCode;
    if (!code) return undefined;
    const wantsAuthTime = code.claims?.id_token?.auth_time !== undefined;
    return {
      acr: code.acr, amr: code.amr, groups: ['staff'],
      ...(wantsAuthTime ? { auth_time: code.authTime } : {}),
    };
  },
});

// The "user": finishes each login interaction with the requested acr and its amr.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'GET' || !ctx.path.startsWith('/interaction/')) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const acr = requestedAcr(details.params);
  const result = details.prompt.name === 'login'
    ? { login: { accountId: 'alice', acr, amr: ACR_AMR[acr] ?? ['pwd'] } }
    : { consent: {} };
  ctx.respond = false;
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
