//! Cluster certificates and the TLS half of the QUIC transport.
//!
//! This module owns the cluster's public-key infrastructure: making the cluster
//! CA ([`init_ca`]), issuing node certificates signed by it
//! ([`issue_node_cert`]), and turning a node's files into the rustls/quinn
//! configurations the [`Transport`](crate::Transport) uses
//! ([`load_node_identity`], [`load_client_trust`]).
//!
//! Every key is ECDSA P-256 and every crypto operation goes through *ring*
//! (rcgen's and rustls' `ring` backends; no aws-lc). QUIC only speaks TLS 1.3.
//!
//! # One port, two protocols, two kinds of client authentication
//!
//! Peers (`dotkv-peer/1`) must present a certificate signed by the cluster CA;
//! API clients (`dotkv-client/1`) authenticate with a bearer token and need not
//! have a certificate at all. Both arrive on the same UDP port, and rustls picks
//! one client-certificate verifier per server configuration, before it knows
//! which ALPN the handshake will settle on (quinn chooses the server
//! configuration from the first packet, which does not expose the ALPN either).
//! So with [`ClientCertPolicy::PeersOnly`] (the default) the verifier is
//! `WebPkiClientVerifier::builder(..).allow_unauthenticated()`:
//!
//! - a certificate that *is* presented is always checked against the cluster
//!   CA during the handshake: a wrong CA, an expired certificate or a missing
//!   clientAuth usage fails the handshake itself, on either ALPN;
//! - presenting *no* certificate passes the handshake, and the transport then
//!   checks the negotiated ALPN at accept time: a `dotkv-peer/1` connection
//!   without a certificate is closed at once with [`CLOSE_REFUSED`] and never
//!   reaches the caller (see `transport.rs`).
//!
//! [`ClientCertPolicy::Required`] makes the certificate mandatory in the
//! handshake for both ALPNs, for clusters whose clients carry certificates too.
//!
//! In TLS 1.3 the server checks the client's certificate *after* the client
//! considers the handshake done, so a client would only learn that it was
//! refused on its first stream. The transport therefore waits for the server's
//! greeting before [`Transport::connect`](crate::Transport::connect) returns:
//! a refused node sees `connect` fail, with the reason.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::RootCertStore;
use time::OffsetDateTime;

/// ALPN of node-to-node traffic (replication, anti-entropy).
pub const PEER_ALPN: &[u8] = b"dotkv-peer/1";
/// ALPN of the binary client protocol (the HTTP API's operations as frames).
pub const CLIENT_ALPN: &[u8] = b"dotkv-client/1";

/// File name of the CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Common name of the CA certificate made by [`init_ca`].
pub const CA_COMMON_NAME: &str = "dotkv cluster CA";

/// QUIC application close code: the server refused this connection (for
/// example a `dotkv-peer/1` connection without a certificate).
pub const CLOSE_REFUSED: u32 = 1;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Ten years, counting leap days.
const CA_VALIDITY: Duration = Duration::from_secs(3653 * 24 * 60 * 60);
/// Node certificates live shorter than the CA (a stolen node key expires), but
/// long enough that rotation is a yearly chore, not an outage in waiting.
const NODE_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 60 * 60);
/// Certificates start an hour in the past, so that a node whose clock is a
/// little behind the issuer's still accepts them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// The two protocols spoken on a node's QUIC port, told apart by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alpn {
    /// `dotkv-peer/1`: node to node; both ends present a CA-signed certificate.
    Peer,
    /// `dotkv-client/1`: API clients, authenticated by bearer token.
    Client,
}

impl Alpn {
    /// Both protocols, in the server's order of preference.
    pub const ALL: [Alpn; 2] = [Alpn::Peer, Alpn::Client];

    /// The ALPN protocol identifier on the wire.
    pub const fn protocol(self) -> &'static [u8] {
        match self {
            Alpn::Peer => PEER_ALPN,
            Alpn::Client => CLIENT_ALPN,
        }
    }

    /// The protocol with this wire identifier, if it is one of ours.
    pub fn from_protocol(protocol: &[u8]) -> Option<Alpn> {
        Alpn::ALL.into_iter().find(|a| a.protocol() == protocol)
    }

    /// `dotkv-peer/1` or `dotkv-client/1`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Alpn::Peer => "dotkv-peer/1",
            Alpn::Client => "dotkv-client/1",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Alpn::Peer => 0,
            Alpn::Client => 1,
        }
    }
}

impl fmt::Display for Alpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which incoming connections must present a client certificate in the TLS
/// handshake. A certificate that is presented is always verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientCertPolicy {
    /// `dotkv-peer/1` connections must present one (checked at accept time,
    /// after the handshake); `dotkv-client/1` connections may come without.
    #[default]
    PeersOnly,
    /// Every connection must present one (checked in the handshake).
    Required,
}

/// The files one operation wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM, mode 0600 on Unix).
    pub key: PathBuf,
}

/// What went wrong with certificates or TLS configuration, and with which file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file would have been overwritten.
    #[error("{} already exists; refusing to overwrite it (move it away first)", path.display())]
    AlreadyExists { path: PathBuf },
    /// A directory could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file does not hold what it should (PEM syntax, no item, bad DER).
    #[error("{}: not a valid {what}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A node name cannot be used (it names files and goes into certificates).
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A subject alternative name is neither a DNS name nor an IP address.
    #[error("invalid subject alternative name {san:?}: expected a DNS name or an IP address")]
    InvalidSan { san: String },
    /// A certificate does not chain to the cluster CA (wrong CA, mismatched CA
    /// key, expired, or without the clientAuth usage).
    #[error("{} is not a valid certificate of the CA in {}: {reason}", cert.display(), ca.display())]
    NotSignedByCa {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    /// rustls rejected the certificate, key or CA.
    #[error("TLS configuration from {}: {source}", path.display())]
    Rustls {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA file.
    #[error("cannot verify client certificates with the CA in {}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: VerifierBuilderError,
    },
    /// The TLS configuration lacks the cipher suite QUIC needs for its
    /// initial packets.
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// The subject alternative names a node certificate gets when none are given.
pub fn default_sans() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

/// Makes the cluster CA: an ECDSA P-256 key and a self-signed CA certificate
/// (common name [`CA_COMMON_NAME`], valid ten years), written as
/// `out_dir/ca.pem` and `out_dir/ca.key`. Creates `out_dir` if needed and
/// refuses to overwrite either file.
pub fn init_ca(out_dir: &Path) -> Result<CertFiles, TlsError> {
    let files = CertFiles {
        cert: out_dir.join(CA_CERT_FILE),
        key: out_dir.join(CA_KEY_FILE),
    };
    refuse_existing(&files)?;
    let key = generate_key("the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(CA_COMMON_NAME);
    // Path length 0: the CA signs node certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(now + CA_VALIDITY);
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsError::Generate {
            what: "the CA certificate".to_owned(),
            source,
        })?;
    write_pair(out_dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// Issues a certificate for node `name`, signed by the CA in `ca_dir`
/// (`ca.pem`, `ca.key`), written as `out_dir/<name>.pem` and
/// `out_dir/<name>.key`.
///
/// The certificate's common name is `name`, which is also how the transport
/// reports who is on the other end. Its subject alternative names are `sans`
/// (DNS names and IP addresses; [`default_sans`] if empty) plus `name` itself
/// when it is a valid DNS name, so peers can dial a node by its name. It is
/// usable as both a TLS server and a TLS client certificate. Valid two years,
/// never past the CA's own expiry. Refuses to overwrite existing files, and
/// checks the result against the CA before writing.
pub fn issue_node_cert(
    ca_dir: &Path,
    name: &str,
    sans: &[String],
    out_dir: &Path,
) -> Result<CertFiles, TlsError> {
    validate_node_name(name)?;
    let files = CertFiles {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    refuse_existing(&files)?;

    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_pem = read_text(&ca_cert_path)?;
    let ca_key_pem = read_text(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Parse {
        path: ca_key_path.clone(),
        what: "private key",
        reason: e.to_string(),
    })?;
    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| TlsError::Parse {
            path: ca_cert_path.clone(),
            what: "PEM certificate",
            reason: e.to_string(),
        })?;
    let ca_not_after = cert_not_after(&ca_der).ok_or_else(|| TlsError::Parse {
        path: ca_cert_path.clone(),
        what: "X.509 certificate",
        reason: "cannot read its validity".to_owned(),
    })?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| TlsError::Parse {
        path: ca_cert_path.clone(),
        what: "CA certificate",
        reason: e.to_string(),
    })?;

    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(name);
    params.subject_alt_names = subject_alt_names(name, sans)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(now + NODE_VALIDITY).min(ca_not_after);
    if params.not_after <= OffsetDateTime::from(now + DAY) {
        return Err(TlsError::NotSignedByCa {
            cert: files.cert,
            ca: ca_cert_path,
            reason: "the CA expires within a day; make a new CA".to_owned(),
        });
    }

    let key = generate_key(&format!("the key of node {name}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| TlsError::Generate {
            what: format!("the certificate of node {name}"),
            source,
        })?;

    // A ca.key that does not belong to ca.pem signs certificates nobody
    // accepts: catch it here rather than at the first handshake.
    let provider = provider();
    let roots = root_store(&ca_cert_path, vec![ca_der])?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|source| TlsError::Verifier {
            path: ca_cert_path.clone(),
            source,
        })?;
    verifier
        .verify_client_cert(cert.der(), &[], UnixTime::now())
        .map_err(|e| TlsError::NotSignedByCa {
            cert: files.cert.clone(),
            ca: ca_cert_path.clone(),
            reason: format!(
                "{e} (does {} belong to {}?)",
                ca_key_path.display(),
                ca_cert_path.display()
            ),
        })?;

    write_pair(out_dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// A node's TLS identity and trust, ready for QUIC: the server configuration
/// (both ALPNs, client certificates per [`ClientCertPolicy`]) and one client
/// configuration per ALPN (presenting the node certificate, verifying servers
/// against the cluster CA).
#[derive(Clone)]
pub struct NodeTls {
    node_name: Option<String>,
    policy: Option<ClientCertPolicy>,
    server: Option<Arc<QuicServerConfig>>,
    clients: [Arc<QuicClientConfig>; 2],
    /// A secret that stays the same across restarts (derived from the node's
    /// private key), for QUIC stateless resets: a restarted node can tell its
    /// peers at once that their connections to its previous run are gone.
    reset_secret: Option<[u8; 32]>,
}

impl fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("node_name", &self.node_name)
            .field("policy", &self.policy)
            .field("server", &self.server.is_some())
            .finish()
    }
}

impl NodeTls {
    /// The key for QUIC stateless resets: the same in every run of this node.
    pub fn reset_key(&self) -> Option<Arc<dyn quinn::crypto::HmacKey>> {
        self.reset_secret.map(|s| {
            Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s))
                as Arc<dyn quinn::crypto::HmacKey>
        })
    }

    /// The common name of this node's certificate; `None` for a client-only
    /// configuration.
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// Which incoming connections must present a certificate; `None` for a
    /// client-only configuration, which cannot accept connections.
    pub fn client_cert_policy(&self) -> Option<ClientCertPolicy> {
        self.policy
    }

    /// A quinn server configuration (default transport parameters; the
    /// [`Transport`](crate::Transport) sets its own). `None` for a client-only
    /// configuration.
    pub fn server_config(&self) -> Option<quinn::ServerConfig> {
        let crypto = self.server.clone()?;
        Some(quinn::ServerConfig::with_crypto(crypto))
    }

    /// A quinn client configuration offering exactly `alpn`.
    pub fn client_config(&self, alpn: Alpn) -> quinn::ClientConfig {
        quinn::ClientConfig::new(self.clients[alpn.index()].clone())
    }
}

/// Loads a node's identity: its certificate chain (`cert`, PEM, node first),
/// its private key (`key`, PEM) and the cluster CA (`ca`, PEM; several
/// certificates are all trusted, which allows rotating the CA). Uses
/// [`ClientCertPolicy::PeersOnly`].
///
/// Fails if the certificate does not chain to the CA, so a misplaced file is
/// caught at startup rather than as refused handshakes.
pub fn load_node_identity(cert: &Path, key: &Path, ca: &Path) -> Result<NodeTls, TlsError> {
    load_node_identity_with(cert, key, ca, ClientCertPolicy::default())
}

/// [`load_node_identity`] with an explicit [`ClientCertPolicy`].
pub fn load_node_identity_with(
    cert: &Path,
    key: &Path,
    ca: &Path,
    policy: ClientCertPolicy,
) -> Result<NodeTls, TlsError> {
    let chain = read_certs(cert)?;
    let private_key = read_key(key)?;
    let roots = root_store(ca, read_certs(ca)?)?;
    let provider = provider();

    let build_verifier = |policy: ClientCertPolicy| {
        let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let builder = match policy {
            ClientCertPolicy::PeersOnly => builder.allow_unauthenticated(),
            ClientCertPolicy::Required => builder,
        };
        builder.build().map_err(|source| TlsError::Verifier {
            path: ca.to_owned(),
            source,
        })
    };
    // Check our own certificate the way peers will check it.
    build_verifier(ClientCertPolicy::Required)?
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| TlsError::NotSignedByCa {
            cert: cert.to_owned(),
            ca: ca.to_owned(),
            reason: e.to_string(),
        })?;

    let rustls_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Rustls { path, source }
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err(ca))?
        .with_client_cert_verifier(build_verifier(policy)?)
        .with_single_cert(chain.clone(), private_key.clone_key())
        .map_err(rustls_err(cert))?;
    server.alpn_protocols = Alpn::ALL.iter().map(|a| a.protocol().to_vec()).collect();
    let server = Arc::new(QuicServerConfig::try_from(server)?);

    let client = |alpn: Alpn| -> Result<Arc<QuicClientConfig>, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err(ca))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), private_key.clone_key())
            .map_err(rustls_err(cert))?;
        config.alpn_protocols = vec![alpn.protocol().to_vec()];
        Ok(Arc::new(QuicClientConfig::try_from(config)?))
    };

    let reset_secret = {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"dotkv quic stateless reset v1\0");
        ctx.update(private_key.secret_der());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    };
    Ok(NodeTls {
        node_name: common_name(&chain[0]),
        policy: Some(policy),
        server: Some(server),
        clients: [client(Alpn::Peer)?, client(Alpn::Client)?],
        reset_secret: Some(reset_secret),
    })
}

/// A client-only configuration: trusts the cluster CA in `ca` and presents no
/// certificate. Enough for `dotkv-client/1` under
/// [`ClientCertPolicy::PeersOnly`]; every `dotkv-peer/1` server refuses it.
pub fn load_client_trust(ca: &Path) -> Result<NodeTls, TlsError> {
    let roots = root_store(ca, read_certs(ca)?)?;
    let provider = provider();
    let client = |alpn: Alpn| -> Result<Arc<QuicClientConfig>, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                path: ca.to_owned(),
                source,
            })?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.protocol().to_vec()];
        Ok(Arc::new(QuicClientConfig::try_from(config)?))
    };
    Ok(NodeTls {
        node_name: None,
        policy: None,
        server: None,
        clients: [client(Alpn::Peer)?, client(Alpn::Client)?],
        reset_secret: None,
    })
}

/// The common name of a certificate's subject, if it has a readable one.
pub(crate) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn cert_not_after(cert: &CertificateDer<'_>) -> Option<OffsetDateTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp()).ok()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn generate_key(what: &str) -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate {
        what: what.to_owned(),
        source,
    })
}

fn common_name_dn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Node names become file names and certificate common names: keep them to
/// a portable, unambiguous alphabet.
fn validate_node_name(name: &str) -> Result<(), TlsError> {
    let invalid = |reason| {
        Err(TlsError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return invalid("it must be 1 to 64 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return invalid("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    if name.starts_with(['.', '-']) {
        return invalid("it must not start with '.' or '-'");
    }
    if name == "ca" {
        return invalid("\"ca\" would clash with the CA's files");
    }
    Ok(())
}

fn subject_alt_names(name: &str, sans: &[String]) -> Result<Vec<SanType>, TlsError> {
    let defaults;
    let sans = if sans.is_empty() {
        defaults = default_sans();
        &defaults[..]
    } else {
        sans
    };
    let mut out: Vec<SanType> = Vec::with_capacity(sans.len() + 1);
    let mut push = |san: SanType| {
        if !out.contains(&san) {
            out.push(san);
        }
    };
    // The node's own name first, so peers can dial it by name.
    if let Some(dns) = dns_san(name) {
        push(dns);
    }
    for san in sans {
        let san = san.trim();
        if let Ok(ip) = san.parse::<IpAddr>() {
            push(SanType::IpAddress(ip));
        } else if let Some(dns) = dns_san(san) {
            push(dns);
        } else {
            return Err(TlsError::InvalidSan {
                san: san.to_owned(),
            });
        }
    }
    Ok(out)
}

fn dns_san(name: &str) -> Option<SanType> {
    // rustls' notion of a DNS name is what clients will match against.
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => name.try_into().ok().map(SanType::DnsName),
        _ => None,
    }
}

fn root_store(
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bytes(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            path: path.to_owned(),
            what: "PEM certificate file",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            path: path.to_owned(),
            what: "PEM certificate file",
            reason: "it holds no CERTIFICATE section".to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bytes(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Parse {
        path: path.to_owned(),
        what: "PEM private key",
        reason: e.to_string(),
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn refuse_existing(files: &CertFiles) -> Result<(), TlsError> {
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(TlsError::AlreadyExists { path: path.clone() });
        }
    }
    Ok(())
}

/// Writes a certificate and its key, each with `create_new` so that a file
/// created meanwhile is not overwritten either. The key is written first and
/// only readable by its owner.
fn write_pair(
    dir: &Path,
    files: &CertFiles,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    write_new(&files.key, key_pem, 0o600)?;
    if let Err(e) = write_new(&files.cert, cert_pem, 0o644) {
        // Do not leave a key without its certificate behind.
        let _ = fs::remove_file(&files.key);
        return Err(e);
    }
    Ok(())
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            TlsError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            TlsError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn ca() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        dir
    }

    #[test]
    fn init_ca_writes_a_ca_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let files = init_ca(dir.path()).unwrap();
        assert_eq!(files.cert, dir.path().join("ca.pem"));
        assert_eq!(files.key, dir.path().join("ca.key"));
        let der = read_certs(&files.cert).unwrap().remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some(CA_COMMON_NAME));
        assert!(cert.is_ca());
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert_eq!(years, 10);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "ca.key must not be readable by others");
        }

        let before = fs::read(&files.key).unwrap();
        let err = init_ca(dir.path()).unwrap_err();
        assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert_eq!(fs::read(&files.key).unwrap(), before);
    }

    #[test]
    fn node_cert_has_name_sans_and_both_usages() {
        let ca = ca();
        let out = tempfile::tempdir().unwrap();
        let sans = vec![
            "db1.example.com".to_owned(),
            "10.0.0.7".to_owned(),
            "::1".to_owned(),
        ];
        let files = issue_node_cert(ca.path(), "node-a", &sans, out.path()).unwrap();
        assert_eq!(files.cert, out.path().join("node-a.pem"));
        let der = read_certs(&files.cert).unwrap().remove(0);
        assert_eq!(common_name(&der).as_deref(), Some("node-a"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
                },
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["node-a", "db1.example.com", "10.0.0.7", "::1"]);
        assert!(!cert.is_ca());

        let tls =
            load_node_identity(&files.cert, &files.key, &ca.path().join(CA_CERT_FILE)).unwrap();
        assert_eq!(tls.node_name(), Some("node-a"));
        assert!(tls.server_config().is_some());
    }

    #[test]
    fn default_sans_are_localhost() {
        let ca = ca();
        let files = issue_node_cert(ca.path(), "n1", &[], ca.path()).unwrap();
        let der = read_certs(&files.cert).unwrap().remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let count = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len();
        assert_eq!(count, 3, "n1, localhost, 127.0.0.1");
        let err = issue_node_cert(ca.path(), "n1", &[], ca.path()).unwrap_err();
        assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn bad_names_and_sans_are_rejected() {
        let ca = ca();
        let out = tempfile::tempdir().unwrap();
        for name in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "ca",
            "sp ace",
            &"x".repeat(65),
        ] {
            let err = issue_node_cert(ca.path(), name, &[], out.path()).unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidName { .. }),
                "{name:?}: {err}"
            );
        }
        let err =
            issue_node_cert(ca.path(), "n", &["not a name!".to_owned()], out.path()).unwrap_err();
        assert!(matches!(err, TlsError::InvalidSan { .. }), "{err}");
        assert_eq!(
            fs::read_dir(out.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }

    #[test]
    fn missing_ca_names_the_file() {
        let empty = tempfile::tempdir().unwrap();
        let err = issue_node_cert(empty.path(), "n", &[], empty.path()).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn mismatched_ca_key_is_caught_at_issue_time() {
        let ca1 = ca();
        let ca2 = ca();
        fs::remove_file(ca1.path().join(CA_KEY_FILE)).unwrap();
        fs::copy(ca2.path().join(CA_KEY_FILE), ca1.path().join(CA_KEY_FILE)).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = issue_node_cert(ca1.path(), "n", &[], out.path()).unwrap_err();
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
        assert_eq!(
            fs::read_dir(out.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }

    #[test]
    fn identity_from_another_ca_is_rejected_at_load() {
        let ca1 = ca();
        let ca2 = ca();
        let files = issue_node_cert(ca2.path(), "intruder", &[], ca2.path()).unwrap();
        let err = load_node_identity(&files.cert, &files.key, &ca1.path().join(CA_CERT_FILE))
            .unwrap_err();
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
    }

    #[test]
    fn garbage_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        fs::write(&junk, "hello").unwrap();
        let err = load_node_identity(&junk, &junk, &junk).unwrap_err();
        assert!(matches!(err, TlsError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("junk.pem"), "{err}");
        assert!(load_client_trust(&junk).is_err());
    }

    #[test]
    fn alpn_round_trips() {
        for alpn in Alpn::ALL {
            assert_eq!(Alpn::from_protocol(alpn.protocol()), Some(alpn));
            assert_eq!(alpn.to_string().as_bytes(), alpn.protocol());
        }
        assert_eq!(Alpn::from_protocol(b"h3"), None);
    }
}
