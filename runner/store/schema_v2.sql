-- runner store database, migration to schema version 2.
-- Facts about the database itself; `storeDir` ties it to one store dir so
-- that a state dir shared by two stores is refused instead of letting GC
-- delete one store's paths as "dead" roots of the other.

create table if not exists Meta (
    name  text primary key not null,
    value text not null
);
