//! openraft glue: type configuration, durable storage (redb) and the witness-to-witness network.
//! This module owns every openraft type; nothing outside it names one.
