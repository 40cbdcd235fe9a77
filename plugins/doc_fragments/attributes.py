# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attributes of the livemig.qemu modules.

Every module extends livemig.qemu.attributes, then the variants that describe it: exactly one of
livemig.qemu.attributes.changes or livemig.qemu.attributes.read_only for its check mode (or its own check_mode
support and details when neither is true), and action_group, async, facts or controller where they apply.
"""
from __future__ import annotations


class ModuleDocFragment:
    # Every module.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff
      mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
"""

    # A module that changes the host; in check mode it reports the change it would make instead.
    CHANGES = r"""
options: {}
attributes:
  check_mode:
    support: full
    details: In check mode it changes nothing and reports whether it would.
"""

    # A module that never changes anything.
    READ_ONLY = r"""
options: {}
attributes:
  check_mode:
    support: full
    details: It changes nothing, so it runs the same in check mode.
"""

    # The modules that run on a QEMU host (meta/runtime.yml, action_groups qemu); they share the options that
    # place a VM's files on it.
    ACTION_GROUP = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/livemig.qemu.qemu) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - livemig.qemu.qemu
    details:
      - Every member takes O(run_dir), O(image_dir) and O(state_dir), so that one C(module_defaults) entry can give
        a host's directories to all of them.
"""

    # A module that waits for a long job and is meant to run under async.
    ASYNC = r"""
options: {}
attributes:
  async:
    description: Supports being used with the C(async) keyword.
    support: full
    details:
      - Its long waits are meant to run with C(async) and C(poll=0), as the C(livemig.qemu.live_migration) role
        runs them, so that it finishes on the managed host on its own even if the controller or its connection goes
        away.
"""

    FACTS = r"""
options: {}
attributes:
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
"""

    # A module that is an action plugin running on the controller.
    CONTROLLER = r"""
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on
      the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
"""
