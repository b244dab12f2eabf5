-- runner store database, migration to schema version 3.
-- Signatures of valid paths (Nix's `sigs`: "key:base64", space-separated),
-- as they arrive with imports (`runner daemon`) or are added later. Kept apart
-- from ValidPaths so that the paths' own rows stay as they were; a row goes
-- with its path.

create table if not exists PathSignatures (
    id   integer primary key not null,
    sigs text not null,
    foreign key (id) references ValidPaths(id) on delete cascade
);
