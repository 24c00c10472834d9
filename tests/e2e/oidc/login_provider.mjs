// A real OpenID provider (oidc-provider 9) that Stepguard signs users in with (the relying-party
// end-to-end tests, tests/e2e/test_oidc_login.py). Started on 127.0.0.1.
//
// Environment: OIDC_PORT, OIDC_JWKS_FILE (private signing keys, first one signs),
// OIDC_CLIENT_SECRET, OIDC_RP (Stepguard's public URL), OIDC_PROVIDER_NAME (its provider name
// in Stepguard's config), OIDC_IGNORE_ACR=1 for a provider that ignores acr_values.
//
// The simulated user "alice" completes every login with the first acr the client asked for
// (`acr_values` or an essential `acr` claim) and the amr that goes with it — or, when the
// provider ignores acr_values, always with a password (aal1). Consent is implicit.
import { readFileSync } from 'node:fs';

import { ACR_AMR, finishLogins, requestedAcr } from './user.mjs';
import Provider from 'oidc-provider';

const env = process.env;
const port = Number(env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const rp = env.OIDC_RP;
const name = env.OIDC_PROVIDER_NAME;
const ignoreAcr = env.OIDC_IGNORE_ACR === '1';


const provider = new Provider(issuer, {
  clients: [{
    client_id: 'stepguard',
    client_secret: env.OIDC_CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    redirect_uris: [`${rp}/oidc/${name}/callback`],
    post_logout_redirect_uris: [`${rp}/login`],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: JSON.parse(readFileSync(env.OIDC_JWKS_FILE, 'utf8')),
  acrValues: Object.keys(ACR_AMR),
  claims: { openid: ['sub'], profile: ['preferred_username', 'name', 'groups', 'amr'],
            email: ['email', 'email_verified'] },
  cookies: { keys: ['stepguard-e2e-login-cookie-key'] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    claimsParameter: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      claims: () => ({ sub, preferred_username: sub, name: 'Alice (oidc-provider)',
                       email: `${sub}@example.com`, email_verified: true, groups: ['staff'] }),
    };
  },
  async loadExistingGrant(ctx) {
    const { client, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    const grant = grantId ? await ctx.oidc.provider.Grant.find(grantId)
      : new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope('openid profile email');
    grant.addOIDCClaims(['sub', 'preferred_username', 'name', 'groups', 'email',
                         'email_verified', 'acr', 'amr', 'auth_time']);
    await grant.save();
    return grant;
  },
});

// The "user" (user.mjs): finishes each login with the requested acr and its amr.
finishLogins(provider, (params) => (ignoreAcr ? 'urn:stepguard:aal1' : requestedAcr(params)));

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider (login) listening on ${issuer}`);
});
