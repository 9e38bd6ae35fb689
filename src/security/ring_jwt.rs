//! Token signatures verified with ring (the library rustls already uses)
//! instead of jsonwebtoken's pure-Rust default: RS256 and ES256 verify
//! several times faster, which matters in a reconnect storm. Plugged in as
//! jsonwebtoken's process-wide [`CryptoProvider`]; signing (tests and tools
//! only — the server never signs) and key utilities stay with the default.

use jsonwebtoken::{
    crypto::{rust_crypto, CryptoProvider, JwtVerifier, KeyUtils},
    errors::{Error, ErrorKind},
    signature, Algorithm, DecodingKey, DecodingKeyKind,
};
use ring::signature::{self as ring_sig, RsaPublicKeyComponents, UnparsedPublicKey};

/// jsonwebtoken with ring verification.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .ec_pub_components_from_private_key,
        ed_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .ed_pub_components_from_private_key,
        compute_digest: rust_crypto::DEFAULT_PROVIDER.key_utils.compute_digest,
    },
};

/// Makes [`PROVIDER`] the process default (once; later calls do nothing).
pub fn install() {
    let _ = PROVIDER.install_default();
}

/// One verification: the algorithm and the key as jsonwebtoken parsed it
/// (an HMAC secret, PKCS#1 RSA DER or RSA components, an EC point).
struct RingVerifier {
    algorithm: Algorithm,
    key: DecodingKeyKind,
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        key: key.kind().clone(),
    }))
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        use Algorithm::*;
        let hmac = |alg| match &self.key {
            DecodingKeyKind::SecretOrDer(secret) => {
                ring::hmac::verify(&ring::hmac::Key::new(alg, secret), message, sig)
            }
            DecodingKeyKind::RsaModulusExponent { .. } => Err(ring::error::Unspecified),
        };
        let rsa = |params: &'static ring_sig::RsaParameters| match &self.key {
            DecodingKeyKind::SecretOrDer(der) => {
                UnparsedPublicKey::new(params, der).verify(message, sig)
            }
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(params, message, sig)
            }
        };
        let point = |alg: &'static dyn ring_sig::VerificationAlgorithm| match &self.key {
            DecodingKeyKind::SecretOrDer(point) => {
                UnparsedPublicKey::new(alg, point).verify(message, sig)
            }
            DecodingKeyKind::RsaModulusExponent { .. } => Err(ring::error::Unspecified),
        };
        match self.algorithm {
            HS256 => hmac(ring::hmac::HMAC_SHA256),
            HS384 => hmac(ring::hmac::HMAC_SHA384),
            HS512 => hmac(ring::hmac::HMAC_SHA512),
            RS256 => rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
            RS384 => rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384),
            RS512 => rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512),
            PS256 => rsa(&ring_sig::RSA_PSS_2048_8192_SHA256),
            PS384 => rsa(&ring_sig::RSA_PSS_2048_8192_SHA384),
            PS512 => rsa(&ring_sig::RSA_PSS_2048_8192_SHA512),
            ES256 => point(&ring_sig::ECDSA_P256_SHA256_FIXED),
            ES384 => point(&ring_sig::ECDSA_P384_SHA384_FIXED),
            EdDSA => point(&ring_sig::ED25519),
            // Algorithms added to jsonwebtoken later are refused until added here.
            _ => Err(ring::error::Unspecified),
        }
        .map_err(|_| signature::Error::new())
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{crypto, EncodingKey};

    use super::*;

    /// Signs with the default (pure-Rust) provider and verifies with ring:
    /// the same signature must pass, and a changed message must not.
    fn agrees(algorithm: Algorithm, signing: &EncodingKey, verifying: &DecodingKey) {
        let message = b"header.payload";
        let signer = (rust_crypto::DEFAULT_PROVIDER.signer_factory)(&algorithm, signing).unwrap();
        let sig = signature::Signer::try_sign(&*signer, message).unwrap();
        let verifier = new_verifier(&algorithm, verifying).unwrap();
        assert!(
            signature::Verifier::verify(&*verifier, message, &sig).is_ok(),
            "{algorithm:?}"
        );
        assert!(
            signature::Verifier::verify(&*verifier, b"header.payloaD", &sig).is_err(),
            "{algorithm:?} accepted a changed message"
        );
        let _ = crypto::verify; // the path jsonwebtoken takes with PROVIDER installed
    }

    #[test]
    fn ring_verifies_what_the_default_provider_signs() {
        let secret = b"a-test-secret-that-is-long-enough-0123";
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            agrees(
                alg,
                &EncodingKey::from_secret(secret),
                &DecodingKey::from_secret(secret),
            );
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let private = std::fs::read(format!("{dir}/rsa_private.pem")).unwrap();
        let public = std::fs::read(format!("{dir}/rsa_public.pem")).unwrap();
        for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
            agrees(
                alg,
                &EncodingKey::from_rsa_pem(&private).unwrap(),
                &DecodingKey::from_rsa_pem(&public).unwrap(),
            );
        }
        let pair = rcgen::KeyPair::generate().unwrap();
        agrees(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            &DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes()).unwrap(),
        );
    }

    #[test]
    fn a_key_of_another_family_is_refused() {
        let hmac = DecodingKey::from_secret(b"secret");
        assert!(new_verifier(&Algorithm::RS256, &hmac).is_err());
    }
}
