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

import { ACR_AMR, finishLogins, requestedAcr } from './user.mjs';
import Provider, { errors } from 'oidc-provider';

const env = process.env;
const port = Number(env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const CLIENT_ID = 'stepguard-e2e';
const RESOURCES = [env.OIDC_AUDIENCE, env.OIDC_OTHER_AUDIENCE];


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

// The "user" (user.mjs): finishes each login with the requested acr and its amr.
finishLogins(provider, requestedAcr);

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
