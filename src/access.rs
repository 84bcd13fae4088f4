//! What a request or a sync connection may do: the verdict the server's auth reaches and
//! both the REST routes and the sync layer act on.

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write.
    ReadWrite,
    /// Read only: REST writes get 403; sync connections receive updates and may use
    /// awareness, but a doc update that would change the doc closes them with 4403.
    ReadOnly,
    /// Nothing: REST gets 401, sync connections are closed with 4401.
    Denied,
}
