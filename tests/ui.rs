//! Compile-time checks of `#[mqrpc::service]`: what must build, and the
//! exact error (and its span) for every misuse.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
