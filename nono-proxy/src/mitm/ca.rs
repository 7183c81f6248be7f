//! The sandbox's own certificate authority: made fresh for each sandbox,
//! its private key only ever in this process's memory (it is dropped once
//! the leaf certificates are signed), name-constrained to the credential
//! hosts so that even a stolen copy could not vouch for any other name,
//! and the leaf certificates for those hosts, all minted at start (the
//! leaf "cache" is complete: credential hosts are known in advance).

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeMap;

/// Why the CA or a leaf could not be made.
#[derive(Debug, thiserror::Error)]
#[error("making the sandbox's certificate authority: {0}")]
pub struct CaError(#[from] rcgen::Error);

/// One host's certificate and key, for the TLS server side.
pub struct Leaf {
    /// Leaf certificate, then the CA's.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

/// rcgen's default validity (1975 to 4096) is kept: the key that could
/// sign with it is gone once [`mint`] returns, and a sandbox's CA is only
/// in that sandbox's bundle.
///
/// The CA certificate (PEM, for the sandbox's bundle) and a leaf per host.
pub struct Minted {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Leaf per host name.
    pub leaves: BTreeMap<String, Leaf>,
}

/// Makes the CA and signs a leaf for each of `hosts`; the CA key is
/// dropped on return.
pub fn mint(sandbox: &str, hosts: &[String]) -> Result<Minted, CaError> {
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("nono-agent sandbox {sandbox} credential CA"),
    );
    dn.push(DnType::OrganizationName, "nono-agent");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Valid for names in the credential hosts' subtrees only, and for no
    // IP address: a key that leaked would still not let anyone
    // impersonate another host to a client that checks constraints.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: hosts
            .iter()
            .map(|h| GeneralSubtree::DnsName(h.clone()))
            .collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([0; 4], 0)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix([0; 16], 0)),
        ],
    });
    let ca_cert = params.self_signed(&ca_key)?;
    let ca_der = ca_cert.der().clone();
    let issuer = Issuer::new(params, ca_key);
    // One key for every leaf of this sandbox: they share a lifetime.
    let leaf_key = KeyPair::generate()?;
    let mut leaves = BTreeMap::new();
    for h in hosts {
        let mut p = CertificateParams::new(vec![h.clone()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, h.clone());
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&leaf_key, &issuer)?;
        leaves.insert(
            h.clone(),
            Leaf {
                chain: vec![cert.der().clone(), ca_der.clone()],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            },
        );
    }
    Ok(Minted {
        ca_pem: ca_cert.pem(),
        leaves,
    })
}
