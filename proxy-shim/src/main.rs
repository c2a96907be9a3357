//! proxy-shim: the SIP front of locsvc. Not built yet (see the proxy-shim issue).

fn main() {
    eprintln!("proxy-shim is not implemented yet; see README.md");
    std::process::exit(2);
}
