// Status: the library's error type. Every fallible call returns one; only the programs' main()
// decides to stop. A Status carries a code and a one-line message meant for the user.
#pragma once

#include <string>
#include <utility>

namespace base {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad flag, bad shape, bad value
  kNotFound,         // missing file
  kBadModelFile,     // model or tokenizer file malformed
  kOutOfMemory,      // host or device allocation failed
  kUnsupported,      // valid request this build or device cannot do
  kCudaError,
  kCommError,        // NCCL / communicator failure
  kInternal,
  kUnavailable,      // busy for now (a full queue): try again later
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  bool ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status BadModelFile(std::string m) { return {StatusCode::kBadModelFile, std::move(m)}; }
inline Status OutOfMemory(std::string m) { return {StatusCode::kOutOfMemory, std::move(m)}; }
inline Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }

}  // namespace base

// Propagate a failed Status to the caller.
#define KP_RETURN_IF_ERROR(expr)            \
  do {                                      \
    ::base::Status kp_status_ = (expr);     \
    if (!kp_status_.ok()) return kp_status_; \
  } while (0)

// Check a precondition; on failure return InvalidArgument with a formatted message.
#define KP_CHECK_ARG(cond, msg)                                  \
  do {                                                           \
    if (!(cond)) return ::base::InvalidArgument(std::string(msg)); \
  } while (0)
