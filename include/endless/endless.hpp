// endless: zero-downtime restarts for Linux servers. One include for users.
// endless::core (this release): the listener registry and the upgrader. The HTTP server
// (endless::http) builds on it.
#pragma once

#include "endless/core/address.hpp"
#include "endless/core/error.hpp"
#include "endless/core/options.hpp"
#include "endless/core/registry.hpp"
#include "endless/core/unique_fd.hpp"
#include "endless/core/upgrader.hpp"
#include "endless/http/message.hpp"
#include "endless/http/router.hpp"
#include "endless/http/server.hpp"
