// Whether this translation unit is built with ASan or TSan (internal), for the few places
// that go around libc: a sanitizer's runtime intercepts libc calls and expects to see them.
// GCC defines __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__; clang only recently does, and
// says it through __has_feature.
#pragma once

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ENDLESS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ENDLESS_SANITIZED 1
#endif
#endif
