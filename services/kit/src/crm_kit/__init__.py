"""crm_kit: the one runtime every CRM service stands on."""
