//! jsonwebtoken's signature checks done by ring, the workspace's one crypto library: a
//! verify-only [`CryptoProvider`] for the asymmetric algorithms (RS256/384/512, PS256/384/512,
//! ES256/384, EdDSA with Ed25519). HMAC algorithms have no verifier here at all, so no key from
//! a JWKS (RSA modulus, EC point) can ever be used as an HMAC secret (RFC 8725 section 2.1,
//! algorithm confusion), and nothing is ever signed.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};

/// The algorithms a token may be signed with (RFC 8725 section 3.1: a fixed list).
pub const ALLOWED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The provider, installed once per process by [`install`].
pub static RING: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes [`RING`] jsonwebtoken's provider, unless one is installed already (then that one
/// checks signatures; the algorithm list is enforced before either is asked).
pub fn install() {
    let _ = CryptoProvider::install_default(&RING);
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if !ALLOWED.contains(alg) || alg.family() != key.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: key.clone(),
    }))
}

struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl RingVerifier {
    fn rsa_params(&self) -> Option<&'static sig::RsaParameters> {
        Some(match self.alg {
            Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }

    fn other_params(&self) -> Option<&'static dyn sig::VerificationAlgorithm> {
        Some(match self.alg {
            Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &sig::ED25519,
            _ => return None,
        })
    }
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match (self.rsa_params(), self.key.kind()) {
            (Some(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
            }
            (Some(params), DecodingKeyKind::SecretOrDer(der)) => {
                UnparsedPublicKey::new(params, der).verify(msg, signature)
            }
            (None, DecodingKeyKind::SecretOrDer(bytes)) => match self.other_params() {
                Some(params) => UnparsedPublicKey::new(params, bytes).verify(msg, signature),
                None => return Err(signature::Error::new()),
            },
            (None, DecodingKeyKind::RsaModulusExponent { .. }) => {
                return Err(signature::Error::new())
            }
        };
        ok.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No HMAC verifier exists, whatever the key (RFC 8725 section 2.1).
    #[test]
    fn hmac_has_no_verifier() {
        let key = DecodingKey::from_secret(b"secret").expect("key");
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert!(verifier(&alg, &key).is_err(), "{alg:?}");
        }
        let rsa = DecodingKey::from_rsa_raw_components(&[0xc5; 256], &[1, 0, 1]);
        assert!(verifier(&Algorithm::HS256, &rsa).is_err());
        // A key of another family than the algorithm's is refused too.
        assert!(verifier(&Algorithm::ES256, &rsa).is_err());
    }

    #[test]
    fn ecdsa_and_ed25519_verify_with_ring() {
        use ring::rand::SystemRandom;
        use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};
        let rng = SystemRandom::new();
        let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("pair");
        let signed = pair.sign(&rng, b"message").expect("sign").as_ref().to_vec();
        let key = DecodingKey::from_ec_der(pair.public_key().as_ref());
        let v = verifier(&Algorithm::ES256, &key).expect("verifier");
        assert!(v.verify(b"message", &signed).is_ok());
        assert!(v.verify(b"messagf", &signed).is_err());

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
        let signed = pair.sign(b"message").as_ref().to_vec();
        let key = DecodingKey::from_ed_der(pair.public_key().as_ref());
        let v = verifier(&Algorithm::EdDSA, &key).expect("verifier");
        assert!(v.verify(b"message", &signed).is_ok());
        assert!(v.verify(b"message", &vec![0; 64]).is_err());
    }
}
