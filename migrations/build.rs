//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds the `.sql` files at
//! compile time, and cargo does not otherwise know to re-run it for a new file.
fn main() {
    println!("cargo:rerun-if-changed=.");
}
