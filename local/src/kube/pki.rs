//! Certificates, keys and bearer tokens of a test cluster, written as files its
//! components read.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A user the API server authenticates by bearer token (`--token-auth-file`).
#[derive(Debug, Clone)]
pub struct TokenUser {
    /// Its user name, e.g. `system:kube-scheduler`.
    pub name: String,
    /// Its groups, e.g. `system:masters`.
    pub groups: Vec<String>,
    /// The bearer token, random.
    pub token: String,
}

impl TokenUser {
    /// A user with a new random token.
    pub fn new(name: &str, groups: &[&str]) -> Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
            token: random_token()?,
        })
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of a cluster's PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA every client and server certificate is signed by.
    pub ca: CertPair,
    /// The API server's serving certificate.
    pub apiserver: CertPair,
    /// The certificate the API server presents to kubelets.
    pub apiserver_kubelet_client: CertPair,
    /// The kubelet's serving certificate.
    pub kubelet: CertPair,
    /// The CA of the aggregation layer's front proxy, and its client certificate.
    pub front_proxy_ca: CertPair,
    pub front_proxy_client: CertPair,
    /// The key that signs service account tokens, and its public half.
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
    /// `--token-auth-file`.
    pub tokens: PathBuf,
}

impl Pki {
    /// Writes a PKI into `dir`: the API server's certificate names `server_names` (host
    /// names and IP addresses), and `users` may authenticate with their tokens.
    pub fn write(dir: &Path, server_names: &[String], users: &[TokenUser]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pair = |name: &str| CertPair {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        let pki = Self {
            ca: pair("ca"),
            apiserver: pair("apiserver"),
            apiserver_kubelet_client: pair("apiserver-kubelet-client"),
            kubelet: pair("kubelet"),
            front_proxy_ca: pair("front-proxy-ca"),
            front_proxy_client: pair("front-proxy-client"),
            service_account_key: dir.join("service-account.key"),
            service_account_public_key: dir.join("service-account.pub"),
            tokens: dir.join("tokens.csv"),
        };

        let ca = write_ca("logpipeline-e2e-ca", &pki.ca)?;
        write_signed(
            &ca,
            &pki.apiserver,
            "kube-apiserver",
            None,
            server_names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        write_signed(
            &ca,
            &pki.apiserver_kubelet_client,
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        write_signed(
            &ca,
            &pki.kubelet,
            "kubelet",
            None,
            server_names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let front_proxy = write_ca("logpipeline-e2e-front-proxy-ca", &pki.front_proxy_ca)?;
        write_signed(
            &front_proxy,
            &pki.front_proxy_client,
            "front-proxy-client",
            None,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let service_account_key = KeyPair::generate()?;
        std::fs::write(
            &pki.service_account_key,
            service_account_key.serialize_pem(),
        )?;
        std::fs::write(
            &pki.service_account_public_key,
            service_account_key.public_key_pem(),
        )?;
        let tokens: String = users
            .iter()
            .map(|user| {
                format!(
                    "{},{},{},\"{}\"\n",
                    user.token,
                    user.name,
                    user.name,
                    user.groups.join(",")
                )
            })
            .collect();
        std::fs::write(&pki.tokens, tokens)?;
        Ok(pki)
    }
}

fn write_ca(name: &str, files: &CertPair) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    std::fs::write(&files.key, key.serialize_pem())?;
    let ca = CertifiedIssuer::self_signed(params, key)?;
    std::fs::write(&files.cert, ca.pem())?;
    Ok(ca)
}

fn write_signed(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    files: &CertPair,
    common_name: &str,
    organization: Option<&str>,
    names: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<()> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(organization) = organization {
        params
            .distinguished_name
            .push(DnType::OrganizationName, organization);
    }
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(())
}

/// 32 random hexadecimal digits.
pub fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}
