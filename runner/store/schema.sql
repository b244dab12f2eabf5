-- runner store database, schema version 1.
-- Applied by runner/store/db.py as migration 1; later versions are new
-- migrations in db.py, never edits to this file.

create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,          -- NAR hash, "sha256:<base16>" as Nix stores it
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ca               text                    -- content address, e.g. "fixed:r:sha256:<base32>"
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- A path may refer to itself; drop that row first so that deleting the
-- path does not trip the "on delete restrict" of its own reference.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,                      -- output name, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);

-- Outputs whose build failed permanently (the failure cache).
create table if not exists FailedPaths (
    path       text primary key not null,
    time       integer not null,
    exitStatus integer,
    drvPath    text,
    logTail    text
);
