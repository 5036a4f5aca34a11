// The OpenID provider the tests start: panva's oidc-provider (OpenID Certified) issuing JWT
// access tokens with the client credentials grant, as Keycloak, Entra ID or Auth0 would for a
// machine caller. Its signing keys come from a file; SIGHUP reads the file again and serves the
// new keys at once (key rotation without a restart).
//
//   node provider.mjs config.json
//
// config.json: {issuer, host, port, jwks_file, resource, scopes, ttl, tls?: {cert, key},
//               clients: [{client_id, client_secret, scope?, alg?, ttl?, claims?}]}
// A client's `alg` picks the key that signs its tokens, `claims` are added to them.
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const clients = new Map(config.clients.map((client) => [client.client_id, client]));

function build() {
  const jwks = JSON.parse(readFileSync(config.jwks_file, 'utf8'));
  const provider = new Provider(config.issuer, {
    jwks,
    clients: config.clients.map(({ client_id, client_secret, scope }) => ({
      client_id,
      client_secret,
      scope,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    })),
    cookies: { keys: ['only-for-tests'] },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client, oneOf) => oneOf ?? config.resource,
        // Any resource the client names becomes the audience: a token "for another API".
        getResourceServerInfo: (ctx, resource, client) => ({
          scope: config.scopes,
          audience: resource,
          accessTokenTTL: clients.get(client.clientId).ttl ?? config.ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: clients.get(client.clientId).alg ?? 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (ctx, token) => clients.get(token.clientId)?.claims,
  });
  return { handler: provider.callback(), kids: jwks.keys.map((key) => key.kid) };
}

let current = build();
const serve = (req, res) => current.handler(req, res);
const server = config.tls
  ? https.createServer(
    { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
    serve,
  )
  : http.createServer(serve);

process.on('SIGHUP', () => {
  try {
    current = build();
    console.log(JSON.stringify({ reloaded: true, kids: current.kids }));
  } catch (error) {
    console.log(JSON.stringify({ reloaded: false, error: String(error) }));
  }
});

server.listen(config.port, config.host, () => {
  console.log(JSON.stringify({ ready: true, issuer: config.issuer, kids: current.kids }));
});
