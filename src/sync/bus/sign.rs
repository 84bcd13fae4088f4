//! Signed bus entries: with a secret every node shares ([`RedisBus::secret`]), each entry
//! carries an HMAC-SHA256 of what it says (its kind, doc, node, number and bytes), and an
//! entry without a valid one is ignored. Without a secret, anyone who can write to Redis
//! can put updates and presence into every node's docs (never into the database
//! directly, but clients may send them back): Redis is then as trusted as Postgres.
//!
//! [`RedisBus::secret`]: super::RedisBus::secret

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The field an entry's signature is in.
pub(super) const FIELD: &str = "s";

/// Signs and checks entries with one secret.
#[derive(Clone)]
pub(super) struct Signer {
    key: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            key: Hmac::new_from_slice(secret).expect("HMAC takes keys of any length"),
        }
    }

    /// The MAC of an entry's parts, each length-prefixed so no two entries' parts run
    /// together the same way.
    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.key.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The signature of an entry made of `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        self.mac(parts).finalize().into_bytes().to_vec()
    }

    /// Whether `signature` is the one of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        self.mac(parts).verify_slice(signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_its_parts_and_secret() {
        let signer = Signer::new(b"secret");
        let sig = signer.sign(&[b"u", b"doc", b"node", b"7", b"\x01\x02"]);
        assert!(signer.verify(&[b"u", b"doc", b"node", b"7", b"\x01\x02"], &sig));
        assert!(!signer.verify(&[b"u", b"doc", b"node", b"8", b"\x01\x02"], &sig));
        // Moving bytes between parts changes the signature.
        assert!(!signer.verify(&[b"u", b"docn", b"ode", b"7", b"\x01\x02"], &sig));
        assert!(!Signer::new(b"other").verify(&[b"u", b"doc", b"node", b"7", b"\x01\x02"], &sig));
        assert!(!signer.verify(&[b"u", b"doc", b"node", b"7", b"\x01\x02"], b"short"));
    }
}
