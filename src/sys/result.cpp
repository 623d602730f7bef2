// Error categories named for the operation that failed, interned once per op string.
#include <zcio/result.hpp>

#include <array>
#include <atomic>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>

namespace zcio {
namespace {

// A category whose name is the operation; its codes are errno values, so it maps to
// generic_category and `ec == std::errc::...` works as for system_category.
class op_category final : public std::error_category {
public:
    explicit op_category(const char* op) noexcept : op_(op) {}

    const char* name() const noexcept override { return op_; }

    std::string message(int ev) const override {
        return std::string(op_) + ": " + std::system_category().message(ev);
    }

    std::error_condition default_error_condition(int ev) const noexcept override {
        return {ev, std::generic_category()};
    }

private:
    const char* op_;
};

// Categories are compared by address, so each op string gets exactly one object for
// the life of the process. Readers scan without the lock: a slot is published (release)
// only after its object is built, and slots are filled in order and never cleared.
constexpr std::size_t max_ops = 256;
std::array<std::atomic<const op_category*>, max_ops> categories{};
std::mutex categories_mutex;

const op_category* find(const char* op) noexcept {
    for (const auto& slot : categories) {
        const op_category* c = slot.load(std::memory_order_acquire);
        if (c == nullptr) {
            return nullptr;
        }
        // The same literal may have different addresses in different translation units.
        if (c->name() == op || std::strcmp(c->name(), op) == 0) {
            return c;
        }
    }
    return nullptr;
}

const op_category* intern(const char* op) noexcept {
    if (const op_category* c = find(op)) {
        return c;
    }
    std::lock_guard lock(categories_mutex);
    if (const op_category* c = find(op)) {
        return c;
    }
    for (auto& slot : categories) {
        if (slot.load(std::memory_order_relaxed) == nullptr) {
            // Never freed: error_codes holding it may outlive any owner we could name.
            auto* c = new (std::nothrow) op_category(op);
            slot.store(c, std::memory_order_release);
            return c;
        }
    }
    return nullptr; // full: the caller falls back to system_category
}

bool is_op_category(const std::error_category& cat) noexcept {
    return dynamic_cast<const op_category*>(&cat) != nullptr;
}

bool is_errno_category(const std::error_category& cat) noexcept {
    return cat == std::system_category() || cat == std::generic_category() || is_op_category(cat);
}

} // namespace

std::error_code op_error(const char* op, int err) noexcept {
    const op_category* c = op != nullptr ? intern(op) : nullptr;
    if (c == nullptr) {
        return errno_error(err);
    }
    return {err, *c};
}

std::error_code name_op(const char* op, std::error_code ec) noexcept {
    if (!ec || !is_errno_category(ec.category())) {
        return ec;
    }
    return op_error(op, ec.value());
}

int errno_of(std::error_code ec) noexcept {
    return is_errno_category(ec.category()) ? ec.value() : 0;
}

namespace detail {
namespace {

// Index layout: 0 system, 1 generic, then the foreign categories, then the op slots.
constexpr std::size_t foreign_first = 2;
constexpr std::size_t max_foreign = 64;
constexpr std::size_t op_first = foreign_first + max_foreign;
std::array<std::atomic<const std::error_category*>, max_foreign> foreign{};
std::mutex foreign_mutex;

std::optional<std::uint8_t> foreign_index(const std::error_category& cat) noexcept {
    for (std::size_t i = 0; i < max_foreign; ++i) {
        const std::error_category* c = foreign[i].load(std::memory_order_acquire);
        if (c == nullptr) {
            return std::nullopt;
        }
        if (c == &cat) {
            return static_cast<std::uint8_t>(foreign_first + i);
        }
    }
    return std::nullopt;
}

} // namespace

std::uint8_t category_index(const std::error_category& cat) noexcept {
    if (cat == std::system_category()) {
        return 0;
    }
    if (cat == std::generic_category()) {
        return 1;
    }
    for (std::size_t i = 0; i + op_first <= UINT8_MAX && i < max_ops; ++i) {
        const op_category* c = categories[i].load(std::memory_order_acquire);
        if (c == nullptr) {
            break;
        }
        if (c == &cat) {
            return static_cast<std::uint8_t>(op_first + i);
        }
    }
    if (auto i = foreign_index(cat)) {
        return *i;
    }
    std::lock_guard lock(foreign_mutex);
    if (auto i = foreign_index(cat)) {
        return *i;
    }
    for (std::size_t i = 0; i < max_foreign; ++i) {
        if (foreign[i].load(std::memory_order_relaxed) == nullptr) {
            foreign[i].store(&cat, std::memory_order_release);
            return static_cast<std::uint8_t>(foreign_first + i);
        }
    }
    return 0; // full: system_category, the value kept
}

const std::error_category& category_at(std::uint8_t index) noexcept {
    const std::error_category* c = nullptr;
    if (index == 1) {
        return std::generic_category();
    }
    if (index >= op_first) {
        c = categories[index - op_first].load(std::memory_order_acquire);
    } else if (index >= foreign_first) {
        c = foreign[index - foreign_first].load(std::memory_order_acquire);
    }
    return c != nullptr ? *c : std::system_category();
}

} // namespace detail

} // namespace zcio
